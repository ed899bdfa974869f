"""camodet: train, evaluate and ship camouflaged object detectors."""

__version__ = "0.1.0"
