"""Whether a URL can be fetched from here, answered within a bound time.

The checks before any job (posinfo.preflight) must answer in seconds offline; a socket's
timeout does not bound the name lookup, which on a machine without network can hang longer
than the request itself, so the request runs in a thread that is waited for at most that long.
"""

from __future__ import annotations

import functools
import threading
import urllib.request

TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=None)
def fetch_problem(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None if a HEAD request for ``url`` succeeds within ``timeout_s`` seconds, name lookup
    included; else why not, in a few words (e.g. ``URLError``). Asked once per process."""
    outcome: list[str | None] = []

    def head() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
                outcome.append(None)
        except Exception as e:  # URLError, timeout, HTTP error: not fetchable from here
            outcome.append(type(e).__name__)

    thread = threading.Thread(target=head, name="posinfo-fetch-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer in {timeout_s:g} s"
