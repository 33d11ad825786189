"""opsgate: the internal control layer for fintech operations."""

__version__ = "0.2.0"
