"""The same MBRNN training code under Spark's TorchDistributor (2 gloo processes on the driver)."""
import numpy as np

from helpers import load_dc2, tiny_config
from lsst_spark_ml.artefacts import verify
from lsst_spark_ml.inference.photoz import PhotozPredictor
from lsst_spark_ml.training.photoz import TrainingSet, train_photoz


def test_torch_distributor_trains_the_unchanged_model(spark, tmp_path):
    v, e, z, _ = load_dc2("train", 2000)
    cfg = tiny_config(train={"backend": "torch-distributor", "num_processes": 2, "max_epochs": 2},
                      model={"gammas": [0.0]})
    res = train_photoz(TrainingSet(v, e, "mag", z, source="dc2[:2000]"), cfg, str(tmp_path / "m"),
                       log=lambda m: None)
    man, _ = verify(tmp_path / "m")
    member = man["members"][0]
    assert member["world_size"] == 2, "training did not run data-parallel"
    assert np.isfinite(member["best_val_loss"]) and member["epochs_run"] == 2
    out = PhotozPredictor.load(tmp_path / "m").predict(v[:100], e[:100], "mag")
    np.testing.assert_allclose(out["pdf"].sum(1), 1.0, rtol=1e-5)
    assert res["model_sha256"]
