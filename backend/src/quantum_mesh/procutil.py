"""Child-process hygiene: children of the coordinator die with it, even after a SIGKILL,
and are stopped in order otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to send ``signum`` to the child when the forking
    thread dies.

    Call it only for children forked from a thread that lives as long as the process (the
    event loop's thread): the signal follows the *thread* that forked. Elsewhere (not Linux)
    it returns None and children rely on their own parent watch.
    """
    if not sys.platform.startswith("linux"):
        return None

    def _set() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return _set


async def stop_child(proc: subprocess.Popen[bytes], grace_s: float, *, kill_wait_s: float) -> bool:
    """SIGTERM ``proc`` (SIGKILL when ``grace_s`` is 0), wait up to ``grace_s`` for it, then
    SIGKILL it and wait up to ``kill_wait_s``. Returns whether it had to be killed. The
    waits run in a thread: ``Popen.wait`` blocks."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    try:
        await asyncio.to_thread(proc.wait, grace_s)
        return False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.to_thread(proc.wait, kill_wait_s)
        return True
