"""Reading MindSpore's errors: its RuntimeErrors bury the useful line under a generic one."""


def mindspore_detail(err: Exception) -> str:
    """The informative line of a MindSpore RuntimeError (its first line is generic; the
    `[ERROR] ...` line holds the reader's or writer's own message)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("[ERROR]")), lines[0] if lines else type(err).__name__)
    return detail.replace("[ERROR]", "").replace("[Internal ERROR]", "").strip()
