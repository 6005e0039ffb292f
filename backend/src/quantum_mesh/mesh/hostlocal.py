"""Large arrays between peers on the same host go through shared memory, not the stream.

A 16 MiB statevector sent over a libp2p stream is encrypted, framed by yamux and decrypted
again in Python, and on a node it is pickled once more into a worker process: measured
~12x slower than a plain loopback TCP copy. Embedded nodes (the default deployment) share
the coordinator's machine, so the bytes can stay where they are: the sender writes each big
array to a file in a private tmpfs directory (``/dev/shm/qmesh-<uid>``, mode 0700) and sends
only its name, dtype and shape; the receiver reads the file once and unlinks it.

Peers find out that they share that directory, not just the machine, by a *host key*: the
kernel's boot id plus the directory's device and inode (containers on one kernel have their
own ``/dev/shm``). A caller puts its key on every request; a node puts its key on every
reply; each side spills only towards a peer whose key equals its own. Names carry 128 random
bits and are read with ``O_NOFOLLOW`` from our own directory only, so a remote peer that
claims our key learns nothing and can name nothing of ours.

Files are cleaned up by whoever can know they are no longer needed: the receiver unlinks
what it read; a caller unlinks its request files once the call has ended, whatever the
outcome; a node sweeps reply files that no caller collected (``sweep``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError

logger = logging.getLogger(__name__)

#: Arrays at least this large are spilled (below it the stream is cheaper than a file).
DEFAULT_MIN_SPILL_BYTES = 1 << 20
#: Reply files older than this were never collected (the caller gave up or died).
UNCOLLECTED_AFTER_S = 300.0
_NAME = re.compile(r"^qmesh-[0-9a-f]{32}$")
_SHM_ROOT = Path("/dev/shm")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: Set false, no process spills (no host key: none offered, none accepted).
SHARED_MEMORY_ENV = "QMESH_MESH_SHARED_MEMORY"


@functools.cache
def spill_dir() -> Path | None:
    """This user's private spill directory, created on first use; ``None`` where the
    machine has no tmpfs at ``/dev/shm`` or the directory is not safely ours, or
    ``QMESH_MESH_SHARED_MEMORY`` is false in this process's environment (a link scenario's
    node in its own network namespace: its bytes must cross the link)."""
    if os.environ.get(SHARED_MEMORY_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not _SHM_ROOT.is_dir():
        return None
    path = _SHM_ROOT / f"qmesh-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as error:
        logger.info("no host-local spill directory: %s", error)
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        logger.warning("%s is not a private directory of ours: arrays stay on the stream", path)
        return None
    return path


@functools.cache
def host_key() -> str | None:
    """What two processes compare to know they share the spill directory; ``None``: never
    spill (no directory, or no boot id to tell this boot from another)."""
    directory = spill_dir()
    if directory is None:
        return None
    try:
        boot_id = _BOOT_ID.read_text().strip()
        info = directory.stat()
    except OSError:
        return None
    return f"{boot_id}:{info.st_dev}:{info.st_ino}"


@dataclass
class Spill:
    """The files one message spilled; ``limit`` bounds their bytes like a frame's."""

    directory: Path
    limit: int
    min_bytes: int = DEFAULT_MIN_SPILL_BYTES
    paths: list[Path] = field(default_factory=list)
    spilled_bytes: int = 0

    def wants(self, nbytes: int) -> bool:
        return nbytes >= self.min_bytes

    def write(self, data: memoryview) -> str:
        """Write ``data`` to a new private file; returns its name.

        Raises:
            FrameTooLarge: the message's spilled bytes would exceed ``limit``.
        """
        if self.spilled_bytes + data.nbytes > self.limit:
            raise FrameTooLarge(
                f"arrays of {self.spilled_bytes + data.nbytes} bytes exceed the {self.limit} limit"
            )
        name = f"qmesh-{secrets.token_hex(16)}"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.paths.append(path)
        try:
            with os.fdopen(fd, "wb", closefd=True) as out:
                out.write(data)
        except BaseException:
            self.discard()
            raise
        self.spilled_bytes += data.nbytes
        return name

    def discard(self) -> None:
        """Unlink every file of this message that its receiver has not taken yet."""
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.paths.clear()


def spill_for(
    peer_key: Any, *, limit: int, min_bytes: int = DEFAULT_MIN_SPILL_BYTES
) -> Spill | None:
    """A ``Spill`` when ``peer_key`` says the peer shares our spill directory."""
    directory, ours = spill_dir(), host_key()
    if directory is None or ours is None or peer_key != ours:
        return None
    return Spill(directory=directory, limit=limit, min_bytes=min_bytes)


@dataclass(frozen=True, slots=True)
class SpilledArray:
    """An array still in its spill file: small to pickle into a worker process, which
    reads it with ``materialize``."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def read(self) -> NDArray[Any]:
        return read_spilled(self.name, np.dtype(self.dtype), self.shape)


def read_spilled(name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """Read and unlink one spill file, checking it holds exactly the announced array.

    Raises:
        ProtocolError: a bad name, no such file here, or a size that does not match.
    """
    directory = spill_dir()
    if directory is None or not _NAME.match(name):
        raise ProtocolError(f"spilled array {name!r} cannot be read on this host")
    path = directory / name
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise ProtocolError(f"spilled array {name} is not on this host: {error}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != expected:
            raise ProtocolError(
                f"spilled array {name} holds {info.st_size} bytes, not the {expected} announced"
            )
        wire = dtype.newbyteorder("<")
        out = np.empty(shape, dtype=wire)
        view = out.reshape(-1).view(np.uint8).data
        got = 0
        while got < expected:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                raise ProtocolError(f"spilled array {name} ended after {got} bytes")
            got += n
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not wire.isnative:  # the bytes are little-endian; a big-endian host converts
        return out.astype(wire.newbyteorder("="))
    return out


def materialize(obj: Any, *, depth: int = 4) -> Any:
    """``obj`` with every ``SpilledArray`` down to ``depth`` levels read into memory."""
    if isinstance(obj, SpilledArray):
        return obj.read()
    if depth <= 0:
        return obj
    if isinstance(obj, dict):
        return {k: materialize(v, depth=depth - 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [materialize(v, depth=depth - 1) for v in obj]
    return obj


def sweep(*, older_than_s: float = UNCOLLECTED_AFTER_S) -> int:
    """Unlink spill files nobody collected; returns how many."""
    directory = spill_dir()
    if directory is None:
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not _NAME.match(entry.name):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed
