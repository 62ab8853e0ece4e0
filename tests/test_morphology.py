"""Morphology end to end on rendered cutouts: train (semi-supervised with the curriculum), predict on Spark with
damaged rows, evaluate with attention maps; bad tables fail before any Spark job."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lsst_spark_ml.config import load_config
from lsst_spark_ml.io.readers import read_table

SIZE = 32


def _cfg(**over):
    base = {"morphology.image_size": SIZE, "morphology.batch_size": 8, "morphology.steps_per_epoch": 3,
            "morphology.epochs": 2, "morphology.unlabelled_ratio": 2, "morphology.early_stop_patience": "null"}
    base.update({f"morphology.{k}": v for k, v in over.items()})
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from lsst_spark_ml.morphology.cutouts import make_sets
    out = tmp_path_factory.mktemp("morph_sets")
    return make_sets(str(out), 48, 64, 40, size=SIZE, seed=3, rows_per_group=16)


@pytest.fixture(scope="module")
def trained(sets, tmp_path_factory):
    from lsst_spark_ml.training.morphology import train_morphology
    out = tmp_path_factory.mktemp("morph_model") / "dat"
    # the recipe of conf/morphology.yaml's pseudo-labels: from the moving-average teacher
    res = train_morphology(sets["labelled"], sets["unlabelled"], _cfg(pseudo_labels="ema"), str(out),
                           log=lambda m: None)
    return out, res


def test_training_writes_a_verified_model_with_its_recipe(trained):
    from lsst_spark_ml.artefacts import verify
    out, res = trained
    manifest, sha = verify(out)
    assert sha == res["model_sha256"] and manifest["kind"] == "morphology-classifier"
    tr = manifest["training"]
    assert tr["mode"] == "semi" and tr["curriculum"] == "snr" and tr["epochs_run"] == 2
    assert tr["images_seen"] == 2 * 3 * 8 * (1 + 2 * 2)        # labelled weak, unlabelled weak + strong
    assert manifest["classes"] == ["E", "S0", "Sa", "Sb", "Sc", "Irr"] and manifest["image_size"] == SIZE
    assert not (out / "_checkpoints").exists()
    hist = json.loads((out / "training_log.json").read_text())["history"]
    assert len(hist) == 2 and all(np.isfinite(h["val_loss"]) for h in hist)


def test_a_survey_monitor_records_each_epoch_without_changing_the_run(sets, trained, tmp_path):
    from safetensors.torch import load_file

    from lsst_spark_ml.morphology.render import CLASSES
    from lsst_spark_ml.training.morphology import train_morphology
    from lsst_spark_ml.training.morphology_monitor import SurveyMonitor
    out, _ = trained
    monitor = SurveyMonitor(sets["test"], SIZE, list(CLASSES))
    train_morphology(sets["labelled"], sets["unlabelled"], _cfg(pseudo_labels="ema"), str(tmp_path / "m"),
                     log=lambda m: None, monitor=monitor)
    hist = json.loads((tmp_path / "m" / "training_log.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert 0 <= h["monitor_macro_f1"] <= 1 and 0 <= h["monitor_accuracy"] <= 1
        assert 0 <= h["monitor_entropy"] <= np.log(len(CLASSES)) + 1e-6
        assert abs(sum(h["monitor_class_mix"]) - 1) < 1e-3
        assert 0 <= h["monitor_confident_fraction"] <= 1
        assert h["monitor_confident_accuracy"] is None or 0 <= h["monitor_confident_accuracy"] <= 1
    # the monitor only watches: the weights are those of the same run without it
    a, b = load_file(str(out / "weights.safetensors")), load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_colour_shift_measured_on_the_unlabelled_rows_is_used_and_recorded(sets, tmp_path):
    from lsst_spark_ml.artefacts import verify
    from lsst_spark_ml.errors import CatalogError
    from lsst_spark_ml.training.morphology import train_morphology
    cfg = _cfg(mode="supervised", colour_shift="true", colour_shift_source="unlabelled")
    with pytest.raises(CatalogError, match="unlabelled cutout table"):
        train_morphology(sets["labelled"], None, cfg, str(tmp_path / "none"), log=lambda m: None)
    train_morphology(sets["labelled"], sets["unlabelled"], cfg, str(tmp_path / "m"), log=lambda m: None)
    mags = verify(tmp_path / "m")[0]["training"]["colour_shift_mags"]
    # survey galaxies lie at higher redshift: g - r redder, r held fixed
    assert len(mags) == 5 and mags[1] == 0 and mags[0] > 0.1


def _damaged_copy(src: str, dst) -> int:
    """The test table plus rows with a truncated cutout, a null cutout and an all-NaN band."""
    import pyarrow.dataset as pds
    shutil.copytree(src, dst)
    files = sorted(p for p in os.listdir(dst) if p.endswith(".parquet") and not p.startswith("_"))
    path = os.path.join(dst, files[0])
    t = pq.read_table(path)
    meta = t.schema.metadata
    rows = t.slice(0, 3).to_pylist()
    rows[0]["cutout"] = rows[0]["cutout"][:100]
    rows[1]["cutout"] = None
    arr = np.frombuffer(rows[2]["cutout"], np.float16).reshape(5, SIZE, SIZE).copy()
    arr[3] = np.nan
    rows[2]["cutout"] = arr.tobytes()
    for i, r in enumerate(rows):
        r["objectId"] = -1 - i
    bad = pa.Table.from_pylist(rows, schema=t.schema)
    pq.write_table(pa.concat_tables([t, bad]).replace_schema_metadata(meta), path)
    return pds.dataset(str(dst), format="parquet").count_rows()


def test_predict_on_spark_keeps_every_row_and_flags_damaged_ones(spark, sets, trained, tmp_path):
    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    from lsst_spark_ml.morphology.cutouts import read_cutouts
    from lsst_spark_ml.morphology.inputs import ALL_NAN_BAND, BAD_SHAPE, MISSING_BAND
    from lsst_spark_ml.pipelines import morphology
    model_dir, _ = trained
    table = tmp_path / "test_damaged"
    n = _damaged_copy(sets["test"], table)
    meta = morphology.predict(spark, _cfg(), str(table), str(model_dir), str(tmp_path / "pred"))
    assert meta["rows_in"] == meta["rows_written"] == n
    out = read_table(spark, str(tmp_path / "pred")).toPandas().set_index("objectId")
    assert len(out) == n and "cutout" not in out.columns
    assert out.loc[-1, "morph_flags"] & BAD_SHAPE and out.loc[-2, "morph_flags"] & MISSING_BAND
    assert out.loc[-3, "morph_flags"] & ALL_NAN_BAND
    assert out.loc[[-1, -2, -3], "morph_class"].isna().all()
    good = out[out.index >= 0]
    assert good["morph_class"].notna().all()
    probs = np.stack(good["morph_probs"].to_numpy())
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # The Spark path gives what the predictor gives in this process.
    images, flags, other = read_cutouts(sets["test"])
    local = MorphologyPredictor.load(model_dir).predict(images, flags)
    ids = other["objectId"].to_numpy()
    assert np.allclose(np.stack(out.loc[ids, "morph_probs"].to_numpy()), local["probs"], atol=1e-5)

    ev = morphology.evaluate(spark, str(tmp_path / "pred"), str(tmp_path / "eval"), cutouts=sets["test"],
                             model_dir=str(model_dir))
    assert ev["n_flagged"] == 3 and ev["n"] == n - 3 and 0 <= ev["macro_f1"] <= 1
    assert os.path.getsize(ev["attention_png"]) > 10_000 and os.path.getsize(ev["confusion_png"]) > 5_000


def test_attention_maps_are_written_on_request(spark, sets, trained, tmp_path):
    from lsst_spark_ml.pipelines import morphology
    model_dir, _ = trained
    morphology.predict(spark, _cfg(attention=True), sets["test"], str(model_dir), str(tmp_path / "p"))
    row = read_table(spark, str(tmp_path / "p")).select("morph_attention", "morph_attention_shape").first()
    maps = np.frombuffer(row["morph_attention"], np.float16).reshape(row["morph_attention_shape"])
    assert maps.shape == (SIZE, SIZE) and 0 <= maps.min() and maps.max() == pytest.approx(1, abs=1e-3)


def test_bad_table_metadata_fails_before_any_spark_job(spark, sets, trained, tmp_path):
    from lsst_spark_ml.errors import CatalogError
    from lsst_spark_ml.pipelines import morphology
    model_dir, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(sets["test"], bad)
    f = sorted(p for p in os.listdir(bad) if p.endswith(".parquet") and not p.startswith("_"))[0]
    t = pq.read_table(bad / f)
    md = dict(t.schema.metadata)
    key = b"lsst_spark_ml.cutouts"
    info = json.loads(md[key])
    info["dtype"] = "int8"
    md[key] = json.dumps(info).encode()
    pq.write_table(t.replace_schema_metadata(md), bad / f)
    before = len(spark.sparkContext.statusTracker().getJobIdsForGroup(None))
    with pytest.raises(CatalogError, match=f):
        morphology.predict(spark, _cfg(), str(bad), str(model_dir), str(tmp_path / "never"))
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup(None)) == before
    assert not (tmp_path / "never").exists()


def test_config_and_inputs_are_checked_before_training(sets, tmp_path):
    from lsst_spark_ml.errors import CatalogError, ConfigError
    from lsst_spark_ml.training.morphology import train_morphology
    with pytest.raises(ConfigError, match="morphology.mode"):
        _cfg(mode="fixmatch")
    with pytest.raises(CatalogError, match="image_size"):
        train_morphology(sets["labelled"], sets["unlabelled"], _cfg(image_size=64), str(tmp_path / "m"))
    with pytest.raises(CatalogError, match="unlabelled"):
        train_morphology(sets["labelled"], None, _cfg(), str(tmp_path / "m"))


@pytest.mark.slow
def test_cli_trains_with_ddp_and_predicts(spark, tmp_path, capsys):
    """The commands a user runs, with the torch-distributor backend (2 processes, each its share of the
    unlabelled row groups)."""
    from lsst_spark_ml.cli import main
    sets = tmp_path / "sets"
    over = ["--set", f"morphology.image_size={SIZE}", "--set", "morphology.batch_size=8", "--set",
            "morphology.steps_per_epoch=2", "--set", "morphology.epochs=2", "--set", "morphology.unlabelled_ratio=1"]
    assert main(["morphology", "make-cutouts", "--out", str(sets), "--n-labelled", "40", "--n-unlabelled", "40",
                 "--n-test", "20", "--size", str(SIZE), "--rows-per-group", "10"]) == 0
    capsys.readouterr()
    assert main(["morphology", "train", "--labelled", str(sets / "labelled"), "--unlabelled",
                 str(sets / "unlabelled"), "--out", str(tmp_path / "m"), "--set", "train.backend=torch-distributor",
                 "--set", "train.num_processes=2", "--set", "morphology.pseudo_labels=ema", *over]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.rindex('\n{\n  "model_dir"') + 1:])     # TorchDistributor prints to stdout too
    assert res["training"]["world_size"] == 2 and res["training"]["backend"] == "torch-distributor"
    assert main(["morphology", "predict", "--cutouts", str(sets / "test"), "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "p"), *over]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 20
    assert main(["morphology", "predict", "--cutouts", str(tmp_path / "nothing"), "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "p2"), *over]) == 2


def test_mask_cache_serves_identical_inputs_and_is_keyed_by_content(sets, tmp_path):
    from lsst_spark_ml.training.morphology import read_cutout_set
    fresh = read_cutout_set(sets["test"], SIZE)
    cached1 = read_cutout_set(sets["test"], SIZE, mask_cache=tmp_path / "c")
    files = sorted((tmp_path / "c").iterdir())
    assert len(files) == 3                          # 40 rows in row groups of 16
    cached2 = read_cutout_set(sets["test"], SIZE, mask_cache=tmp_path / "c")
    assert sorted((tmp_path / "c").iterdir()) == files
    for c in (cached1, cached2):
        assert np.array_equal(c.x.numpy(), fresh.x.numpy()) and np.array_equal(c.ids, fresh.ids)
    other = read_cutout_set(sets["labelled"], SIZE, mask_cache=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) > len(files) and len(other.ids) == 48


def test_sql_function_matches_the_job_and_checks_its_arguments(spark, sets, trained):
    from pyspark.errors import AnalysisException

    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    from lsst_spark_ml.morphology.cutouts import read_cutouts
    from udfs.sql import register
    model_dir, _ = trained
    assert register(spark, {"morphology_dat": str(model_dir)}) == {
        "morphology_dat": ["cutout", "cutout_shape", "cutout_dtype"]}
    spark.read.parquet(sets["test"]).createOrReplaceTempView("morph_cutouts")
    got = spark.sql("SELECT objectId, morphology_dat(cutout, cutout_shape, cutout_dtype) AS m "
                    "FROM morph_cutouts").toPandas().set_index("objectId")
    images, flags, other = read_cutouts(sets["test"])
    local = MorphologyPredictor.load(model_dir).predict(images, flags)
    ids = other["objectId"].to_numpy()
    assert len(got) == len(ids)
    assert np.allclose(np.stack([got.loc[i, "m"]["morph_probs"] for i in ids]), local["probs"], atol=1e-5)
    with pytest.raises(AnalysisException, match="morphology_dat"):
        spark.sql("SELECT morphology_dat(cutout, cutout_shape) FROM morph_cutouts").collect()
