"""ssgan: semi-supervised image classification with GANs (Salimans et al. 2016; Wei et al. 2018).

``ssgan.SSGANClassifier`` is the scikit-learn estimator, ``ssgan.load(RUN_DIR)`` a trained run as one, and
``ssgan.make_table(...)`` what ``ssgan table`` does (``ssgan.table``); they are imported on first use, so that
``import ssgan`` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["SSGANClassifier", "load", "make_table", "__version__"]

_LAZY = {"SSGANClassifier": "estimator", "load": "estimator", "make_table": "table"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ssgan' has no attribute {name!r}")
