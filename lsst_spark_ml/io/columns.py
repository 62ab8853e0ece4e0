"""Which catalog columns hold what: Rubin Object-table flux naming or magnitude naming, per band.

Resolution works on a schema alone (no data read), so a missing band column or a wrong type fails
before any Spark job starts, with a message that names the column.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import CatalogSettings
from ..errors import CatalogError

ID_CANDIDATES = ("objectId", "id", "object_id", "objid")
RA_CANDIDATES = ("coord_ra", "ra", "RA")
DEC_CANDIDATES = ("coord_dec", "dec", "decl", "DEC", "Dec")
NUMERIC_KINDS = ("float", "double", "int", "bigint", "smallint", "tinyint", "decimal")


@dataclass
class ResolvedColumns:
    photometry: str                     # "flux" (nJy) or "mag" (AB)
    bands: list[str]
    values: list[str]                   # flux or magnitude column per band
    errors: list[str]
    id_col: str | None = None
    ra_col: str | None = None
    dec_col: str | None = None
    truth_col: str | None = None
    ebv_col: str | None = None
    keep_cols: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        """Columns the photo-z features read, in a fixed order."""
        cols = [c for pair in zip(self.values, self.errors) for c in pair]
        if self.ebv_col:
            cols.append(self.ebv_col)
        return cols

    @property
    def has_coordinates(self) -> bool:
        return self.ra_col is not None and self.dec_col is not None


def _type_name(dtype) -> str:
    """Spark DataType, pyarrow type or numpy dtype -> a lowercase name."""
    if hasattr(dtype, "simpleString"):
        return dtype.simpleString()
    return str(dtype).lower()


def _is_numeric(type_name: str) -> bool:
    return any(type_name.startswith(k) for k in NUMERIC_KINDS) or type_name.startswith(("uint", "int"))


def _first_present(names, candidates):
    for c in candidates:
        if c in names:
            return c
    return None


def resolve_columns(schema: dict, cat: CatalogSettings, need_truth: bool = False,
                    source: str = "catalog") -> ResolvedColumns:
    """Map the configured band naming onto ``schema`` ({column name: type}) and check every column.

    ``source`` names the file or table in error messages.
    """
    names = set(schema)
    if not names:
        raise CatalogError(f"{source} has no columns")

    def template(tpl: str, band: str) -> str:
        return tpl.format(band=band, flux_type=cat.flux_type)

    flux = [template(cat.flux_col, b) for b in cat.bands]
    flux_err = [template(cat.flux_err_col, b) for b in cat.bands]
    mag = [template(cat.mag_col, b) for b in cat.bands]
    mag_err = [template(cat.mag_err_col, b) for b in cat.bands]

    def missing(cols):
        return [c for c in cols if c not in names]

    kind = cat.photometry
    if kind == "auto":
        miss_flux, miss_mag = missing(flux + flux_err), missing(mag + mag_err)
        if not miss_flux:
            kind = "flux"
        elif not miss_mag:
            kind = "mag"
        else:
            # Report against the naming the catalog is closest to, so the message is useful.
            closest, miss = ("flux", miss_flux) if len(miss_flux) <= len(miss_mag) else ("mag", miss_mag)
            raise CatalogError(
                f"{source} lacks band column(s) {miss} for bands {cat.bands} "
                f"({closest} naming; set catalog.photometry / catalog.*_col to match your columns)")
    values, errors = (flux, flux_err) if kind == "flux" else (mag, mag_err)
    miss = missing(values + errors)
    if miss:
        raise CatalogError(f"{source} lacks band column(s) {miss} ({kind} naming, bands {cat.bands})")

    def check_numeric(col):
        t = _type_name(schema[col])
        if not _is_numeric(t):
            raise CatalogError(f"column {col!r} of {source} must be numeric, but its type is {t}")

    for c in values + errors:
        check_numeric(c)

    def explicit_or_auto(value, candidates, what):
        if value is not None:
            if value not in names:
                raise CatalogError(f"{source} has no {what} column {value!r}")
            return value
        return _first_present(names, candidates)

    id_col = explicit_or_auto(cat.id_col, ID_CANDIDATES, "id")
    ra_col = explicit_or_auto(cat.ra_col, RA_CANDIDATES, "right ascension")
    dec_col = explicit_or_auto(cat.dec_col, DEC_CANDIDATES, "declination")
    if (ra_col is None) != (dec_col is None):
        raise CatalogError(f"{source} has only one coordinate column ({ra_col or dec_col}); need both RA and Dec")
    for c in (ra_col, dec_col):
        if c is not None:
            check_numeric(c)
    truth_col = cat.truth_col
    if truth_col is not None and truth_col not in names:
        if need_truth:
            raise CatalogError(f"{source} has no truth (redshift) column {truth_col!r}")
        truth_col = None
    if truth_col is not None:
        check_numeric(truth_col)
    ebv_col = cat.ebv_col
    if ebv_col is not None:
        if ebv_col not in names:
            raise CatalogError(f"{source} has no E(B-V) column {ebv_col!r}")
        check_numeric(ebv_col)
    miss_keep = missing(cat.keep_cols)
    if miss_keep:
        raise CatalogError(f"{source} lacks column(s) {miss_keep} listed in catalog.keep_cols")
    return ResolvedColumns(kind, list(cat.bands), values, errors, id_col, ra_col, dec_col,
                           truth_col, ebv_col, list(cat.keep_cols))


def spark_schema_dict(df) -> dict:
    return {f.name: f.dataType for f in df.schema.fields}
