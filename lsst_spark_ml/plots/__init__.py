"""plots: figures on their own Agg canvas (``canvas``), and ``show`` for notebooks."""
from .display import show

__all__ = ["show"]
