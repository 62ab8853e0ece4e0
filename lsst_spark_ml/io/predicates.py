"""User-given Spark SQL predicates (``--where``-style options): analysed at once against the DataFrame, so a typo
fails with the option named before any Spark job, and a null result counts as false (a row is never kept or
dropped by accident of a missing value)."""
from __future__ import annotations

from ..errors import CatalogError


def sql_predicate(df, where: str, what: str):
    """``where`` -> a boolean Column on ``df``; ``what`` names the option in the error (e.g. "bayes.where")."""
    from pyspark.sql import functions as F
    try:
        expr = F.expr(where)
        df.select(expr).schema        # analyses the expression now
    except Exception as exc:  # noqa: BLE001 - Spark raises several kinds for a bad expression
        raise CatalogError(f"{what} {where!r} is not a valid Spark SQL predicate on this catalog: "
                           f"{str(exc).splitlines()[0]}") from None
    return F.coalesce(expr.cast("boolean"), F.lit(False))
