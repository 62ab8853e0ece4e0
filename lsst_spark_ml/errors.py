"""Exceptions a user sees. Each names what is wrong (a column, a file, a key) so the fix is obvious."""


class LsstSparkMLError(Exception):
    """Base class of the errors this package raises on purpose."""


class ConfigError(LsstSparkMLError, ValueError):
    """A configuration key or value is invalid."""


class CatalogError(LsstSparkMLError, ValueError):
    """An input catalog is missing, empty, or lacks a column the job needs."""


class ModelIntegrityError(LsstSparkMLError):
    """A model directory does not match its manifest (tampered, truncated or incomplete)."""


class TemplateCoverageError(LsstSparkMLError, ValueError):
    """SED templates or filter curves do not cover the redshift range a Bayesian photo-z job asks for."""
