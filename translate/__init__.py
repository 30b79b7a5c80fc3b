"""translate: train and compare neural machine translation models end to end."""

__version__ = "0.1.0"
