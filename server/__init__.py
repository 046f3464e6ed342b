"""subcoder's language server: `subcoder serve` (see `subcoder.server.main`)."""

from subcoder.pruner import __version__

__all__ = ["__version__"]
