"""Galaxy morphology on the Hubble sequence (issue 8, Kang et al. 2022): the data side.

``render``: labelled 5-band galaxy images rendered with GalSim (the label model) in a labelled and a
shifted survey domain. ``masks``: the object mask of the reference (per-band Gaussian mixture chosen by
AICc). ``inputs``: 5 bands -> the 11-channel model input, with per-row flags instead of exceptions.
``cutouts``: cutout tables in Parquet (binary tensors plus shape/dtype), their checks and decoding.
"""
