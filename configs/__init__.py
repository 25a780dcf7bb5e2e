"""The Hydra configuration tree of ssgan (shipped with the package as ``ssgan.configs``)."""
