"""model-sync: move ML model weights between servers, verified and atomically published."""

__version__ = "0.1.0"
