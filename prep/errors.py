"""The one error type of the offline stage: bad input, with a message that names the file."""


class PrepError(Exception):
    pass
