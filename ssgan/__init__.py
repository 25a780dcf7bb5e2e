"""ssgan: semi-supervised image classification with GANs (Salimans et al. 2016; Wei et al. 2018)."""

__version__ = "0.1.0"
