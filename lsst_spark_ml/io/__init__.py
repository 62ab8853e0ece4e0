"""Catalog input and output: readers (Parquet, HATS, FITS, DESC HDF5), column maps, the HATS writer."""
