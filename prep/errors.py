"""The one error type of the offline stage."""
from base.errors import UserError


class PrepError(UserError):
    """Bad input, with a message that names the file."""
