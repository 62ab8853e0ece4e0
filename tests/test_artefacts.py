import json
import shutil

import numpy as np
import pytest

from lsst_spark_ml.artefacts import load_artefact, verify
from lsst_spark_ml.errors import ModelIntegrityError
from lsst_spark_ml.inference.photoz import PhotozPredictor


def test_manifest_describes_the_model(tiny_model):
    path, sha = tiny_model
    man, got = verify(path)
    assert got == sha
    assert man["bands"] == list("ugrizy") and man["bins"]["n_bins"] == 32
    assert man["architecture"]["n_members"] == 2
    assert len(man["scaler"]["min"]) == len(man["feature_names"])
    assert man["training_data"]["sha256"] and man["metrics"]["z_mean"]["n"] > 0
    assert set(man["files"]) == {"weights.safetensors", "training_log.json"}   # the log is pinned too


def test_tampered_weights_are_refused(tiny_model, tmp_path):
    src, _ = tiny_model
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    with open(bad / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(ModelIntegrityError, match="weights.safetensors has sha256"):
        PhotozPredictor.load(bad)


def test_edited_manifest_and_extra_files_are_refused(tiny_model, tmp_path):
    src, sha = tiny_model
    bad = tmp_path / "bad2"
    shutil.copytree(src, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["bins"]["z_max"] = 9.0
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelIntegrityError, match="expected"):
        load_artefact(bad, expected_sha256=sha)
    shutil.copy(bad / "weights.safetensors", bad / "other.safetensors")
    with pytest.raises(ModelIntegrityError, match="other.safetensors"):
        verify(bad)
    with pytest.raises(ModelIntegrityError, match="does not exist"):
        verify(tmp_path / "nowhere")


def test_loaded_model_predicts_deterministically(tiny_model):
    from helpers import load_dc2
    v, e, z, _ = load_dc2("validation", 500)
    a = PhotozPredictor.load(tiny_model[0]).predict(v, e, "mag")
    b = PhotozPredictor.load(tiny_model[0]).predict(v, e, "mag")
    np.testing.assert_array_equal(a["pdf"], b["pdf"])
    np.testing.assert_allclose(a["pdf"].sum(1), 1.0, rtol=1e-5)
    assert np.all(a["z_lo68"] <= a["z_median"]) and np.all(a["z_median"] <= a["z_hi68"])
