"""The photo-z model as a Spark SQL function."""
import numpy as np
import pandas as pd

from helpers import BANDS, load_dc2
from lsst_spark_ml.inference.photoz import PhotozPredictor
from udfs.sql import register


def test_photoz_from_sql_matches_the_predictor(spark, tiny_model):
    v, e, z, ids = load_dc2("validation", 400)
    flux = 10 ** (-0.4 * (np.where(v > 90, 40.0, v) - 31.4))
    ferr = flux * e / 1.0857
    pdf = pd.DataFrame({"objectId": ids})
    for k, b in enumerate(BANDS):
        pdf[f"{b}_cModelFlux"], pdf[f"{b}_cModelFluxErr"] = flux[:, k], ferr[:, k]
    spark.createDataFrame(pdf).createOrReplaceTempView("object")
    sig = register(spark, {"photoz_test": str(tiny_model[0])})
    assert sig["photoz_test"] == [c for b in BANDS for c in (f"{b}_value", f"{b}_error")]
    args = ", ".join(f"{b}_cModelFlux, {b}_cModelFluxErr" for b in BANDS)
    out = spark.sql(f"SELECT objectId, photoz_test({args}) AS pz FROM object").select(
        "objectId", "pz.z_median", "pz.flags", "pz.model_sha256").toPandas().set_index("objectId").loc[ids]
    # The SQL function runs with the default precision, auto: resolve the reference the same way.
    ref = PhotozPredictor.load(tiny_model[0], precision="auto").predict(flux, ferr, "flux")
    assert len(out) == 400
    np.testing.assert_allclose(out["z_median"].to_numpy(), ref["z_median"], rtol=1e-6)
    np.testing.assert_array_equal(out["flags"].to_numpy(), ref["flags"])
    assert (out["model_sha256"] == tiny_model[1]).all()
