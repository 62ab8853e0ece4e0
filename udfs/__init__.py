"""Thin pandas/Arrow UDF factories over lsst_spark_ml.inference."""
