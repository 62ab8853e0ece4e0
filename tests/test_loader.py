"""The project's Parquet -> torch loader (the Petastorm replacement): sharding, shuffling, exact counts."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lsst_spark_ml.training.loader import ParquetCache, ParquetLoader, materialize

N, GROUP, WIDTH = 26_000, 2_000, 4


@pytest.fixture(scope="module")
def pq_dir(tmp_path_factory):
    """Two files, 13 row groups of 2,000 rows: id, a float column and a fixed-length list<float> column."""
    d = tmp_path_factory.mktemp("loader")
    ids = np.arange(N, dtype=np.int64)
    rng = np.random.default_rng(1)
    x = rng.normal(size=N)
    vec = [list(map(float, ids[i] + np.arange(WIDTH) / 10)) for i in range(N)]
    table = pa.table({"id": ids, "x": x, "vec": pa.array(vec, type=pa.list_(pa.float32()))})
    pq.write_table(table.slice(0, 14_000), d / "part-0.parquet", row_group_size=GROUP)
    pq.write_table(table.slice(14_000), d / "part-1.parquet", row_group_size=GROUP)
    (d / "_SUCCESS").touch()
    return str(d)


def _ids(loader, epoch):
    return np.concatenate([b["id"].numpy() for b in loader.epoch(epoch)])


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_row_exactly_once_across_ranks(pq_dir, world_size):
    for epoch in (0, 1):
        parts = []
        for rank in range(world_size):
            ld = ParquetLoader(pq_dir, ["id", "x", "vec"], 1000, rank=rank, world_size=world_size,
                               shuffle_buffer=3000, seed=7)
            ids = _ids(ld, epoch)
            assert len(ids) == ld.num_rows(epoch) > 0
            parts.append(ids)
        allids = np.concatenate(parts)
        assert len(allids) == N
        np.testing.assert_array_equal(np.sort(allids), np.arange(N))


@pytest.mark.parametrize("shuffle", [True, False])
def test_read_ahead_does_not_change_the_stream(pq_dir, shuffle):
    streams = [_ids(ParquetLoader(pq_dir, ["id"], 700, rank=1, world_size=2, shuffle=shuffle, shuffle_buffer=2500,
                                  seed=5, prefetch=k), 2) for k in (0, 1, 3)]
    for other in streams[1:]:
        np.testing.assert_array_equal(streams[0], other)


def test_shuffle_is_seeded_by_seed_and_epoch(pq_dir):
    ld = ParquetLoader(pq_dir, ["id"], 512, rank=0, world_size=1, shuffle_buffer=5000, seed=3)
    e0, e0b, e1 = _ids(ld, 0), _ids(ld, 0), _ids(ld, 1)
    np.testing.assert_array_equal(e0, e0b)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(np.sort(e0), np.sort(e1))
    other = _ids(ParquetLoader(pq_dir, ["id"], 512, rank=0, world_size=1, shuffle_buffer=5000, seed=4), 0)
    assert not np.array_equal(e0, other)
    # rows are mixed across row groups, not just row groups permuted
    assert len(np.unique(e0[:2000] // GROUP)) > 1
    # set_epoch + __iter__ is the same stream as epoch(e)
    ld.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([b["id"].numpy() for b in ld]), e1)
    # no shuffle: file order, row order
    plain = ParquetLoader(pq_dir, ["id"], 512, shuffle=False, rank=0, world_size=1)
    np.testing.assert_array_equal(_ids(plain, 0), np.arange(N))


def test_batches_shapes_and_dtypes(pq_dir):
    ld = ParquetLoader(pq_dir, ["id", "x", "vec"], 1536, rank=1, world_size=2)
    batches = list(ld.epoch(0))
    rows = ld.num_rows(0)
    assert rows % 1536   # 12,000 or 14,000 rows: a short last batch
    assert len(batches) == len(ld) == -(-rows // 1536)
    assert all(len(b["id"]) == 1536 for b in batches[:-1])
    assert len(batches[-1]["id"]) == rows - 1536 * (len(batches) - 1) < 1536
    b = batches[0]
    assert b["id"].dtype == torch.int64 and b["id"].ndim == 1
    assert b["x"].dtype == torch.float32 and b["x"].shape == (1536,)
    assert b["vec"].dtype == torch.float32 and b["vec"].shape == (1536, WIDTH)
    # each list row belongs to its id
    torch.testing.assert_close(b["vec"][:, 0], b["id"].to(torch.float32))

    dl = ParquetLoader(pq_dir, ["id"], 1536, rank=1, world_size=2, drop_last=True, dtype=torch.float64)
    batches = list(dl.epoch(0))
    assert len(batches) == len(dl) == rows // 1536
    assert all(len(b["id"]) == 1536 for b in batches)
    f64 = next(iter(ParquetLoader(pq_dir, ["x"], 10, dtype=torch.float64)))
    assert f64["x"].dtype == torch.float64


def test_even_batches_gives_every_rank_the_same_count(pq_dir):
    lds = [ParquetLoader(pq_dir, ["id"], 1000, rank=r, world_size=3, even_batches=True) for r in range(3)]
    for epoch in range(3):
        counts = [sum(1 for _ in ld.epoch(epoch)) for ld in lds]
        assert len(set(counts)) == 1 and counts[0] == lds[0].num_batches(epoch)


def test_row_count_mismatch_raises(pq_dir):
    ld = ParquetLoader(pq_dir, ["id"], 1000, rank=0, world_size=2)
    u = ld._units[ld._order(0)[0]]
    ld._units[ld._order(0)[0]] = type(u)(u.file, u.row_group, u.num_rows + 1)   # a tampered footer count
    with pytest.raises(RuntimeError, match=os.path.basename(pq_dir)):
        list(ld.epoch(0))


def test_rows_lost_after_reading_raise(pq_dir, monkeypatch):
    """A reader that silently drops rows (Petastorm's 0-row bug) is caught by the end-of-epoch check."""
    ld = ParquetLoader(pq_dir, ["id"], 1000, rank=0, world_size=2)
    real = ParquetLoader._rows

    def lossy(self, epoch):
        for i, chunk in enumerate(real(self, epoch)):
            if i:
                yield chunk
    monkeypatch.setattr(ParquetLoader, "_rows", lossy)
    with pytest.raises(RuntimeError, match="footers"):
        list(ld.epoch(0))


def test_too_few_row_groups_for_the_ranks(tmp_path):
    pq.write_table(pa.table({"id": np.arange(10)}), tmp_path / "one.parquet")
    with pytest.raises(ValueError, match="row groups"):
        ParquetLoader(str(tmp_path), ["id"], 4, rank=0, world_size=2)


def test_two_ranks_feed_a_torch_model(pq_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(WIDTH, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = 0
    for rank in (0, 1):
        ld = ParquetLoader(pq_dir, ["vec", "x"], 2048, rank=rank, world_size=2, seed=5)
        for batch in ld.epoch(0):
            x = batch["vec"] / N
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch["x"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
            seen += len(x)
    assert seen == N


def test_materialize_spark_dataframe(spark, tmp_path):
    from pyspark.sql import functions as F
    df = (spark.range(30_000)
          .withColumn("x", (F.col("id") * 0.5).cast("float"))
          .withColumn("vec", F.array(*[(F.col("id") + i).cast("float") for i in range(3)])))
    cache = materialize(df, str(tmp_path / "cache"), rows_per_group=4_000)
    assert isinstance(cache, ParquetCache)
    assert cache.num_rows == 30_000
    assert cache.num_row_groups > 1 and cache.num_files > 1
    assert set(cache.schema.names) == {"id", "x", "vec"}
    assert os.path.dirname(cache.path) == str(tmp_path / "cache")
    success = os.path.join(cache.path, "_SUCCESS")
    listing = sorted(os.listdir(cache.path))
    mtime = os.stat(success).st_mtime_ns

    sc = spark.sparkContext
    sc.setJobGroup("loader-reuse", "second materialize")
    try:
        again = materialize(df, str(tmp_path / "cache"), rows_per_group=4_000)
    finally:
        sc.setJobGroup("", "")
    assert again.path == cache.path and again.num_rows == 30_000
    assert os.stat(success).st_mtime_ns == mtime and sorted(os.listdir(cache.path)) == listing
    assert list(sc.statusTracker().getJobIdsForGroup("loader-reuse")) == []

    # a different DataFrame gets a different key
    other = materialize(df.filter("id < 100"), str(tmp_path / "cache"), rows_per_group=40)
    assert other.path != cache.path and other.num_rows == 100

    parts = [np.concatenate([b["id"].numpy() for b in cache.loader(["id", "vec"], 4096, rank=r,
                                                                     world_size=2).epoch(0)])
             for r in (0, 1)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(30_000))
    b = next(iter(cache.loader(["vec"], 16, rank=0, world_size=2)))
    assert b["vec"].shape == (16, 3)
