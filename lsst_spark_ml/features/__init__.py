"""Photometry -> features, the non-detection policy and its flag bits, scalers saved with models."""
