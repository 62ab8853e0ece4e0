"""Issue 10: folded BatchNorm, precision chosen by the hardware behind an accuracy gate, compact PDFs,
batches sized by bytes, and the GPU path (skipped without CUDA)."""
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import BANDS, load_dc2
from lsst_spark_ml.config import CatalogSettings, InferenceSettings, load_config
from lsst_spark_ml.errors import ConfigError
from lsst_spark_ml.features import flags as F
from lsst_spark_ml.features.photometry import build_features
from lsst_spark_ml.inference import compact_pdf as C
from lsst_spark_ml.inference.accuracy import bf16_gate, calibration_sample
from lsst_spark_ml.inference.fast import (FoldedEnsemble, cpu_bf16_features, fold_mbrnn, hardware_bf16,
                                          resolve_precision)
from lsst_spark_ml.inference.photoz import PhotozPredictor
from lsst_spark_ml.io.columns import resolve_columns, spark_schema_dict
from lsst_spark_ml.models import MBRNN
from udfs.photoz import (arrow_batch_rows, broadcast_model, inference_resource_profile, output_schema,
                         photoz_arrow_mapper, row_bytes)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shipped():
    from lsst_spark_ml.cli import default_model_dir
    return PhotozPredictor.load(default_model_dir(), precision="float32")


@pytest.fixture(scope="module")
def calib():
    return calibration_sample()


def test_batchnorm_folding_is_exact_in_float32():
    torch.manual_seed(0)
    m = MBRNN(11, 16, [32, 64, 32])
    with torch.no_grad():                      # non-trivial running statistics and affine parameters
        for bn in (l for l in m.net if isinstance(l, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.1, 5)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    m.eval()
    folded = fold_mbrnn(m)
    assert not any(isinstance(l, torch.nn.BatchNorm1d) for l in folded)
    assert sum(isinstance(l, torch.nn.Linear) for l in folded) == 4
    x = torch.randn(500, 11)
    with torch.no_grad():
        a, b = m(x), folded(x)
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    assert isinstance(m.net[1], torch.nn.BatchNorm1d)      # the source model is left as it was


def test_folded_shipped_ensemble_matches_the_trained_one(shipped, calib):
    v, e, kind, _ = calib
    res = shipped.predict(v[:3000], e[:3000], kind)
    X, _, _ = build_features(v[:3000], e[:3000], kind, shipped.bands, shipped.features)
    Xs, _ = shipped.scaler.transform(X)
    with torch.inference_mode():
        ref = shipped.ensemble(torch.from_numpy(Xs)).numpy()
    ok = res["ok"]
    np.testing.assert_allclose(res["pdf"][ok], ref[ok], atol=2e-5)
    assert isinstance(shipped.runner, FoldedEnsemble)


def test_precision_auto_follows_the_hardware_and_is_overridable(monkeypatch):
    import os
    if os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read().split()
        assert bool(cpu_bf16_features()) == any(f in flags for f in ("amx_bf16", "avx512_bf16"))
    monkeypatch.setenv("LSST_SPARK_ML_CPU_BF16", "0")
    assert not hardware_bf16(CPU) and resolve_precision("auto", CPU) == "float32"
    monkeypatch.setenv("LSST_SPARK_ML_CPU_BF16", "1")
    assert hardware_bf16(CPU) and resolve_precision("auto", CPU) == "bfloat16"
    assert resolve_precision("float32", CPU) == "float32"          # an explicit setting wins
    assert load_config(overrides={"inference": {"precision": "float32"}}).inference.precision == "float32"
    assert InferenceSettings().precision == "auto"
    with pytest.raises(ConfigError, match="inference.precision"):
        load_config(overrides={"inference": {"precision": "float16"}})
    with pytest.raises(ConfigError, match="inference.pdf_format"):
        load_config(overrides={"inference": {"pdf_format": "jpeg"}})


def test_auto_without_bf16_hardware_is_float32(shipped, monkeypatch):
    from lsst_spark_ml.cli import default_model_dir
    monkeypatch.setenv("LSST_SPARK_ML_CPU_BF16", "0")
    p = PhotozPredictor.load(default_model_dir(), precision="auto")
    assert p.precision == "float32" and "no native bfloat16" in p.precision_reason


def test_accuracy_gate_passes_for_the_shipped_model_and_falls_back_when_violated(shipped, calib, monkeypatch):
    from lsst_spark_ml.cli import default_model_dir
    monkeypatch.setenv("LSST_SPARK_ML_CPU_BF16", "1")
    gate = bf16_gate(shipped, sample=calib)                 # the real check, full validation file, not cached
    assert gate.passed, gate.reason
    assert gate.n > 20000 and gate.tv_p99 < 0.01 and max(gate.deltas.values()) < 0.01
    # The same comparison with a tolerance no reduced precision can meet: the loader falls back to float32.
    v, e, kind, z = calib
    strict = {"rel_tol": 1e-9, "tv_p99": 1e-9, "sample": (v[:2000], e[:2000], kind, z[:2000])}
    p = PhotozPredictor.load(default_model_dir(), precision="auto", gate_kw=strict)
    assert p.precision == "float32" and "accuracy gate failed" in p.precision_reason
    assert not p.gate.passed and p.gate.tv_p99 > 1e-9
    q = PhotozPredictor.load(default_model_dir(), precision="auto", gate_kw={"sample": calib})
    assert q.precision == "bfloat16"
    # bfloat16 really is what runs: the answers differ from float32, by little
    r32, r16 = shipped.predict(*calib[:3]), q.predict(*calib[:3])
    tv = 0.5 * np.abs(r32["pdf"] - r16["pdf"]).sum(axis=1)
    assert 0 < np.nanpercentile(tv, 99) < 0.01


def test_compact_pdf_round_trip_size_and_missing_rows(shipped, calib):
    v, e, kind, _ = calib
    res = shipped.predict(v[:3000], e[:3000], kind)
    pdf = res["pdf"].copy()
    pdf[5] = np.nan                                           # a row with no estimate
    codes = C.encode(pdf, "uint8")
    assert codes.dtype == np.uint8 and codes.shape == pdf.shape
    assert C.bytes_per_object("uint8", shipped.n_bins) == 64 < 256 == C.bytes_per_object("float32", 64)
    back = C.decode(codes, "uint8")
    assert np.isnan(back[5]).all() and not codes[5].any()
    ok = np.isfinite(pdf).all(axis=1)
    np.testing.assert_allclose(back[ok].sum(axis=1), 1.0, atol=1e-5)
    # per-bin error: 1/255 of the peak from rounding sqrt(p / peak) to 1/510, plus the renormalisation
    # (bounded by the same again); CDF error (what PIT and CRPS see) under 0.005
    peak = pdf[ok].max(axis=1, keepdims=True)
    assert np.max(np.abs(back[ok] - pdf[ok]) / peak) < 2.0 / 255
    assert np.max(np.abs(np.cumsum(back[ok], 1) - np.cumsum(pdf[ok], 1))) < 0.005
    arr = C.binary_array(codes, ok)
    assert arr.null_count == 1 and arr.is_null().to_pylist()[5]
    assert arr.nbytes < 70 * len(pdf)                       # 64 B + a 4-byte offset per row (+ validity bits)
    np.testing.assert_array_equal(C.codes_from_binary(arr, 64), codes)
    hist = C.to_qp_hist(codes, shipped.edges)
    np.testing.assert_allclose((hist["pdfs"][ok] * np.diff(hist["bins"])).sum(axis=1), 1.0, atol=1e-5)
    quant = C.to_qp_quant(codes, shipped.edges)
    np.testing.assert_allclose(quant["locs"][ok][:, 49], res["z_median"][ok], atol=0.02)   # q = 0.50
    assert np.isnan(quant["locs"][5]).all()


def test_batch_rows_follow_bytes(spark):
    df = spark.createDataFrame(pd.DataFrame({c: [1.0] for c in
                                             [f"mag_{b}_lsst" for b in BANDS] + [f"mag_err_{b}_lsst" for b in BANDS]}))
    w32 = row_bytes(df.schema, 64, True, "float32")
    w8 = row_bytes(df.schema, 64, True, "uint8")
    assert w32 - w8 == 192 and w8 == 12 * 8 + 48 + 8 + 64 + 4 + 64 + 4
    inf = InferenceSettings(batch_mb=4, batch_size=1000)
    rows = arrow_batch_rows(df.schema, 64, inf)
    assert rows % 1000 == 0 and rows * w32 <= 4 << 20 < (rows + 1000) * w32
    assert arrow_batch_rows(df.schema, 64, InferenceSettings(batch_mb=None), default=777) == 777
    assert inference_resource_profile(spark, InferenceSettings(device="cuda")) is None     # local: no GPUs


def test_gpu_profile_shares_each_gpu_between_tasks(spark):
    from udfs.photoz import network_batch
    from udfs.resources import gpu_profile, tasks_per_gpu
    prof = inference_resource_profile(spark, InferenceSettings(device="cuda", tasks_per_gpu=4), force=True)
    assert prof.taskResources["gpu"].amount == 0.25 and prof.taskResources["cpus"].amount == 1
    assert prof.executorResources["gpu"].amount == 1
    assert gpu_profile(spark, "cpu", None) is None
    # None: the executor's cores per GPU
    assert tasks_per_gpu({"spark.executor.cores": "16", "spark.executor.resource.gpu.amount": "2"}, None) == 8
    assert tasks_per_gpu({}, None) == 1 and tasks_per_gpu({}, 3) == 3
    inf = InferenceSettings()
    assert network_batch(inf, torch.device("cpu")) == inf.batch_size
    assert network_batch(inf, torch.device("cuda:1")) == inf.gpu_batch_size


def test_uint8_pdf_column_in_spark(spark, tiny_model):
    from test_udf_photoz import damaged_frame
    pdf = damaged_frame(1500)
    df = spark.createDataFrame(pdf).repartition(2)
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings(truth_col="redshift"))
    bc = broadcast_model(spark, str(tiny_model[0]))
    f32 = InferenceSettings(precision="float32")
    u8 = InferenceSettings(precision="float32", pdf_format="uint8")
    a = (df.mapInArrow(photoz_arrow_mapper(bc, cols, f32), output_schema(df.schema))
         .select("id", "pdf", "z_median", "flags").toPandas().set_index("id").loc[pdf["id"]])
    out = df.mapInArrow(photoz_arrow_mapper(bc, cols, u8), output_schema(df.schema, pdf_format="uint8"))
    assert out.schema["pdf"].dataType.simpleString() == "binary"
    b = out.select("id", "pdf", "z_median", "flags").toPandas().set_index("id").loc[pdf["id"]]
    assert len(b) == len(pdf)
    np.testing.assert_array_equal(a["flags"].to_numpy(), b["flags"].to_numpy())
    np.testing.assert_array_equal(a["z_median"].to_numpy(), b["z_median"].to_numpy())   # from the full PDF
    no_est = (b["flags"].to_numpy() & F.NO_ESTIMATE) != 0
    assert no_est.sum() == 1 and b["pdf"][no_est].isna().all()
    codes = np.stack([np.frombuffer(x, dtype=np.uint8) for x in b["pdf"][~no_est]])
    full = np.stack(a["pdf"][~no_est].to_numpy())
    assert codes.shape == full.shape
    np.testing.assert_allclose(C.decode_uint8(codes), full, atol=2e-3)
    # the evaluation reads the compact column back
    from lsst_spark_ml.pipelines.photoz import decode_pdf_column
    dec = decode_pdf_column(out.select("id", "pdf"), 32).toPandas().set_index("id").loc[pdf["id"]]
    assert dec["pdf"][no_est].isna().all()
    np.testing.assert_allclose(np.stack(dec["pdf"][~no_est].to_numpy()), full, atol=2e-3)


def test_bfloat16_mapper_equals_bfloat16_predictor(spark, tiny_model):
    v, e, z, ids = load_dc2("validation", 2000)
    frame = pd.DataFrame(np.column_stack([v, e]), columns=[f"mag_{b}_lsst" for b in BANDS]
                         + [f"mag_err_{b}_lsst" for b in BANDS])
    frame["id"] = ids
    df = spark.createDataFrame(frame).repartition(2)
    cols = resolve_columns(spark_schema_dict(df), CatalogSettings())
    inf = InferenceSettings(precision="bfloat16")
    out = (df.mapInArrow(photoz_arrow_mapper(broadcast_model(spark, str(tiny_model[0])), cols, inf),
                         output_schema(df.schema)).select("id", "z_median").toPandas().set_index("id").loc[ids])
    ref = PhotozPredictor.load(tiny_model[0], precision="bfloat16").predict(v, e, "mag")
    np.testing.assert_allclose(out["z_median"].to_numpy(), ref["z_median"], atol=1e-3)


def test_device_summaries_equal_numpy_summaries(shipped, calib):
    """The GPU path computes the summaries with torch on the device; on the same PDFs they must equal numpy's."""
    from lsst_spark_ml.inference.summaries import summarize, summarize_torch
    v, e, kind, _ = calib
    pdf = shipped.predict(v[:3000], e[:3000], kind)["pdf"]
    pdf = pdf[np.isfinite(pdf).all(1)]
    pdf[0] = 0.0
    pdf[0, 7] = 1.0                     # all mass in one bin: the interpolation's edge case
    a, b = summarize(pdf, shipped.edges), summarize_torch(torch.from_numpy(pdf), shipped.edges)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_predictor_matches_cpu(shipped, calib):     # pragma: no cover - runs on GPU machines only
    from lsst_spark_ml.cli import default_model_dir
    v, e, kind, _ = calib
    gpu = PhotozPredictor.load(default_model_dir(), device="cuda", precision="float32")
    assert gpu.device.type == "cuda"
    a, b = shipped.predict(v[:5000], e[:5000], kind), gpu.predict(v[:5000], e[:5000], kind, batch_size=4096)
    np.testing.assert_allclose(b["pdf"], a["pdf"], atol=1e-4)
    ok = a["ok"]
    np.testing.assert_array_equal(b["ok"], ok)
    np.testing.assert_allclose(b["z_median"][ok], a["z_median"][ok], atol=1e-4)    # summaries on the device
    assert gpu._pinned(4096, 11).is_pinned()
    g16 = PhotozPredictor.load(default_model_dir(), device="cuda", precision="auto", gate_kw={"sample": calib})
    assert g16.precision == ("bfloat16" if torch.cuda.is_bf16_supported() and g16.gate.passed else "float32")


def test_dcp_runs_folded_and_its_bfloat16_is_gated_on_the_ood_answer_too(calib, monkeypatch):
    """DCP: the folded float32 pairs give the trained model's scores; bfloat16 only where the gate passes,
    and the gate also bounds how the OOD flags move."""
    from pathlib import Path

    from lsst_spark_ml.artefacts import load_artefact
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.inference.dcp import DCPPredictor
    from lsst_spark_ml.models import dcp_score
    monkeypatch.setenv("LSST_SPARK_ML_CPU_BF16", "1")
    art = load_artefact(Path(default_model_dir()).parent / "dcp_dc2")
    v, e, kind, z = calib
    p32 = DCPPredictor.from_artefact(art)
    assert p32.precision == "float32"
    Xs = p32.scaler.transform(build_features(v[:4000], e[:4000], kind, p32.bands, p32.features)[0])[0]
    with torch.inference_mode():
        trained = dcp_score(*p32.ts2(torch.from_numpy(np.ascontiguousarray(Xs, np.float32)))).double().numpy()
    np.testing.assert_allclose(p32.score_and_pdf(Xs)[0], trained, atol=1e-4)

    gate = bf16_gate(p32, sample=calib, use_cache=False)
    assert gate.passed, gate.reason
    assert gate.deltas["ood_flag_jaccard"] >= 0.98 and gate.deltas["ood_flagged_fraction"] < 0.01
    auto = DCPPredictor.from_artefact(art, precision="auto", gate_kw={"sample": calib})
    assert auto.precision == "bfloat16" and "gate passed" in auto.precision_reason
    r32, r16 = p32.predict(v, e, kind), auto.predict(v, e, kind)
    assert 0 < np.abs(r16["ood_score"] - r32["ood_score"]).max() < 0.2      # bfloat16 really runs
    strict = DCPPredictor.from_artefact(art, precision="auto",
                                        gate_kw={"sample": calib, "rel_tol": 1e-6, "tv_p99": 1.0})
    assert strict.precision == "float32" and "OOD score change" in strict.precision_reason
