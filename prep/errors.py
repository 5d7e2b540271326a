"""The one error type of the offline stage, and reading MindSpore's errors."""


class PrepError(Exception):
    """Bad input, with a message that names the file."""


def mindspore_detail(err: Exception) -> str:
    """The informative line of a MindSpore RuntimeError (its first line is generic; the
    `[ERROR] ...` line holds the reader's or writer's own message)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("[ERROR]")), lines[0] if lines else type(err).__name__)
    return detail.replace("[ERROR]", "").replace("[Internal ERROR]", "").strip()
