"""The one error type of the offline stage."""


class PrepError(Exception):
    """Bad input, with a message that names the file."""
