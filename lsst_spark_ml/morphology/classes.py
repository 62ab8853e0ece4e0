"""The morphology capability's class names and bands, without GalSim.

They live apart from ``render`` so that the inference side (cutout tables, UDFs on the workers) imports
nothing of the renderer: a cluster that only applies a model needs no GalSim.
"""
from __future__ import annotations

CLASSES = ("E", "S0", "Sa", "Sb", "Sc", "Irr")
BANDS = ("g", "r", "i", "z", "y")
