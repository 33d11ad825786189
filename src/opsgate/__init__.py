"""opsgate: the internal control layer for fintech operations."""

__version__ = "0.1.0"
