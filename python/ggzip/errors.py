"""Errors meant for the user: the CLI prints them as `ggzip: error: ...`."""


class GGZipError(Exception):
    """A clear, user-facing error (bad input file, unsupported tensor, ...).
    The message names the file and, where there is one, the tensor."""
