"""The exceptions subcoder raises on purpose.

Every message is one readable line meant for a person: the CLI prints it to stderr and exits
non-zero, the server logs it and answers with an empty result.
"""


class SubcoderError(Exception):
    """Base of all errors subcoder reports to a user."""


class ConfigError(SubcoderError):
    """A setting or argument is out of range or unknown."""


class ModelError(SubcoderError):
    """A model cannot be found, fetched or loaded."""


class CorruptError(SubcoderError):
    """A file on disk is truncated, tampered with or of an unknown format."""


class CacheError(SubcoderError):
    """The cache directory cannot be written (permissions, full disk)."""


class Cancelled(SubcoderError):
    """Long work was cancelled by the caller; nothing was written."""
