"""synthfm: medical-imaging foundation models with synthetic data, end to end."""

__version__ = "0.1.0"
