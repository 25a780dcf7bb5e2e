"""ssgan: semi-supervised image classification with GANs (Salimans et al. 2016; Wei et al. 2018).

``ssgan.SSGANClassifier`` is the scikit-learn estimator and ``ssgan.load(RUN_DIR)`` a trained run as one;
both are imported on first use, so that ``import ssgan`` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["SSGANClassifier", "load", "__version__"]


def __getattr__(name: str):
    if name in ("SSGANClassifier", "load"):
        from . import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'ssgan' has no attribute {name!r}")
