"""utils_cv: train, evaluate and deploy image classifiers."""

__version__ = "0.1.0"
