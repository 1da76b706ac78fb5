"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class EdgerunError(Exception):
    """An expected user error: bad input file, missing model, unsupported architecture.

    The message says what is wrong and what to do, in one line.
    """


class CorruptFileError(EdgerunError):
    """A model or artifact file is truncated, corrupt or fails its checksum."""


class UnsupportedError(EdgerunError):
    """The input uses something edgerun does not support (an architecture, a tensor type)."""
