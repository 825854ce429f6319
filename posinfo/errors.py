"""The project's error type: raised at the boundary with a one-line message."""


class PosinfoError(Exception):
    """A user-facing error: one line that names the bad value and the fix."""


def reason(error: BaseException, limit: int = 160) -> str:
    """An exception's first line, to quote inside a one-line message: at most ``limit``
    characters, cut at the end of a sentence or of a word, never inside one."""
    text = str(error).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    if end >= limit // 2:
        return head[: end + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:") + " …"
