"""pyspark.ml estimators of this package (Estimator/Model/Params; savable; usable in a Pipeline)."""
