"""User SQL predicates (bayes --where, ood fit --labelled-where): analysed before any job, nulls count as false."""
from __future__ import annotations

import pytest

from lsst_spark_ml.errors import CatalogError
from lsst_spark_ml.io.predicates import sql_predicate


def test_predicate_keeps_matching_rows_and_treats_null_as_false(spark):
    df = spark.createDataFrame([(1, 22.0), (2, 24.0), (3, None)], "id long, mag_i double")
    kept = df.where(sql_predicate(df, "mag_i < 23", "--labelled-where")).select("id").collect()
    assert [r.id for r in kept] == [1]
    flagged = df.select("id", sql_predicate(df, "mag_i > 23", "x").alias("f")).orderBy("id").collect()
    assert [r.f for r in flagged] == [False, True, False]


@pytest.mark.parametrize("where", ["mag_q < 23", "mag_i <"])
def test_bad_predicate_names_the_option(spark, where):
    df = spark.createDataFrame([(1, 22.0)], "id long, mag_i double")
    with pytest.raises(CatalogError, match="--labelled-where .* is not a valid Spark SQL predicate"):
        sql_predicate(df, where, "--labelled-where")


def test_ood_fit_refuses_a_bad_labelled_selection_before_training(spark, tmp_path):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.pipelines import ood
    cfg = load_config([], [])
    with pytest.raises(CatalogError, match="--labelled-where 'mag_q_lsst < 23'"):
        ood.fit(spark, cfg, None, None, str(tmp_path / "m"), labelled_where="mag_q_lsst < 23")
    assert not (tmp_path / "m").exists()
