"""subcoder's language server: `subcoder serve` (see `server.main`)."""

from pruner import __version__

__all__ = ["__version__"]
