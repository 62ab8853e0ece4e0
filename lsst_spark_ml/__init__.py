"""lsst_spark_ml: machine learning over Rubin Observatory (LSST) catalogs with Apache Spark."""

__version__ = "0.1.0"
