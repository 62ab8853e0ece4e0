"""The photo-z output schema, defined once for the UDFs, the jobs, SQL registration and the tests.

PySpark is imported where the Spark types are built, not at module load: the Arrow side serves code that
runs without Spark (benchmarks/gpu_check.py drives the jobs' worker functions on machines without a JVM).
"""
from __future__ import annotations

import pyarrow as pa

from .summaries import POINT_COLUMNS

OUTPUT_COLUMNS = POINT_COLUMNS + ("pdf", "flags", "model_sha256")


def spark_fields(pdf_format: str = "float32") -> list:
    """``pdf_format``: float32 -> ``pdf`` is array<float>; uint8 -> binary, K bytes (inference.compact_pdf)."""
    from pyspark.sql import types as T
    pdf_type = T.ArrayType(T.FloatType(), False) if pdf_format == "float32" else T.BinaryType()
    return ([T.StructField(c, T.DoubleType(), True) for c in POINT_COLUMNS]
            + [T.StructField("pdf", pdf_type, True),
               # nullable, although never null: pandas UDFs cannot declare non-null results
               T.StructField("flags", T.LongType(), True),
               T.StructField("model_sha256", T.StringType(), True)])


def spark_struct(pdf_format: str = "float32"):
    from pyspark.sql import types as T
    return T.StructType(spark_fields(pdf_format))


def arrow_columns(result: dict, sha256: str, n_bins: int, with_pdf: bool = True,
                  pdf_format: str = "float32") -> dict[str, pa.Array]:
    """Predictor output (numpy) -> Arrow arrays without a Python loop over rows."""
    import numpy as np
    ok = result["ok"]
    n = len(ok)
    cols = {c: pa.array(result[c], type=pa.float64(), mask=~ok) for c in POINT_COLUMNS}
    if with_pdf and pdf_format != "float32":
        from .compact_pdf import binary_array, encode
        cols["pdf"] = binary_array(encode(result["pdf"], pdf_format), ok)
    elif with_pdf:
        offsets = pa.array(np.arange(0, (n + 1) * n_bins, n_bins, dtype=np.int32))
        values = pa.array(np.ascontiguousarray(result["pdf"], dtype=np.float32).ravel(), type=pa.float32())
        cols["pdf"] = pa.ListArray.from_arrays(offsets, values, mask=pa.array(~ok))
    cols["flags"] = pa.array(result["flags"], type=pa.int64())
    cols["model_sha256"] = pa.array([sha256] * n, type=pa.string()) if n else pa.array([], pa.string())
    return cols
