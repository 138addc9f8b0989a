"""mediasan: the 311 media sanitizer."""

__version__ = "0.1.0"
