"""Asteroid taxonomy from LSST colours (issue 7): features, the labelled set from space-classy spectra, GMM math.

The pyspark.ml estimators live in ``lsst_spark_ml.estimators.asteroids``; end-to-end steps in
``lsst_spark_ml.pipelines.asteroids``.
"""
