"""SQL Server stand-in (placeholder docstring, replaced below)."""

from .process import MssqlStandinProcess

__all__ = ["MssqlStandinProcess"]
