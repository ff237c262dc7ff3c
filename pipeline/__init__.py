"""Batch side of the FER trust toolkit: datasets, models, training, explanation,
demographics, audit statistics and the DuckDB results store."""

__version__ = "0.1.0"
