"""Training-sample influence (TracIn over saved snapshots) and spectroscopic target selection. No Spark here:
``lsst_spark_ml.pipelines.influence`` runs these functions in partitions."""
