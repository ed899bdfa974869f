"""camodet: train, evaluate and ship camouflaged object detectors."""

__version__ = "0.1.0"
__all__ = ["Predictor", "TTA"]


def __getattr__(name):
    # `from camodet import Predictor` without importing torch for `camodet --version`
    if name in __all__:
        from .serving import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'camodet' has no attribute {name!r}")
