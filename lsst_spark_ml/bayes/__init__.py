"""Bayesian photo-z by template fitting: exact grid, vectorised MCMC and batched VI posteriors.

Spark-free numerics (numpy/torch); ``lsst_spark_ml.pipelines.bayes`` runs them on the flagged rows of a catalog.
"""
