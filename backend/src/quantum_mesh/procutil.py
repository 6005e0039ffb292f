"""Child-process hygiene: children of the coordinator die with it, even after a SIGKILL."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the forking thread dies.

    Call it only for children forked from a thread that lives as long as the process (the
    event loop's thread): the signal follows the *thread* that forked. Elsewhere (not Linux)
    it returns None and children rely on their own parent watch.
    """
    if not sys.platform.startswith("linux"):
        return None

    def _set() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return _set
