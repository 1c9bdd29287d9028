"""sddcompress: distil a compact image classifier (KD, DKD, SDD) and deploy it."""

__version__ = "0.1.0"
