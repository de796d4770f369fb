"""lrstudy: how the learning rate shapes robustness to spurious correlations, compressibility and representations."""

__version__ = "0.1.0"
