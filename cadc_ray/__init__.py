"""cadc_ray: train recommendation models on compressed training data (CADC) on Ray."""

__version__ = "0.1.0"
