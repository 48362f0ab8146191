"""The package version, alone in a leaf module: modules that print it import it from here, not
from ``sncli`` (whose ``__init__`` imports the engines, which would make a cycle)."""

__version__ = "0.1.0"
