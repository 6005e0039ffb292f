"""The event projector in a process of its own, beside the coordinator.

Catching the MongoDB projections up (reading new events, building provenance bundles,
encoding BSON) is pure Python. On the API loop it took about a quarter of the loop's Python
time under load, as a burst once a second, and it held the coordinator's GIL, which the
database writer and the libp2p thread wait for after every statement and send
(``docs/operations.md``, "The projector in a process of its own"). Here it reads the same
database and writes the same MongoDB with a GIL of its own.

The parent gives the URLs in the environment (``QMESH_DATABASE_URL``,
``QMESH_PROJECTOR_MONGO_URL``), never on the command line, where ``ps`` would show their
passwords. The projector's checkpoint lives in MongoDB, so a restarted process resumes where
the last one stopped; re-applying an event is harmless (``projector.py``).

Run by :class:`ProjectionProcess`; ``python -m quantum_mesh.store.mongo.projection_process``
is the child's entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from quantum_mesh.logs import get_logger
from quantum_mesh.procutil import die_with_parent, stop_child

log = get_logger(__name__)

DATABASE_URL_ENV = "QMESH_DATABASE_URL"
MONGO_URL_ENV = "QMESH_PROJECTOR_MONGO_URL"
INTERVAL_ENV = "QMESH_PROJECTOR_INTERVAL_S"
#: A child that exits is started again after this long, doubling up to ``MAX_RESTART_S``.
FIRST_RESTART_S = 0.5
MAX_RESTART_S = 30.0
#: A child that ran this long before it exited starts the back-off over.
HEALTHY_RUN_S = 60.0
STOP_GRACE_S = 5.0
POLL_S = 0.5


class ProjectionProcess:
    """Starts, watches (restarting it when it exits) and stops the projector child."""

    def __init__(
        self, *, database_url: str, mongo_url: str, interval_s: float, data_dir: Path
    ) -> None:
        self._env = {
            **os.environ,
            DATABASE_URL_ENV: database_url,
            MONGO_URL_ENV: mongo_url,
            INTERVAL_ENV: str(interval_s),
        }
        self.pidfile = data_dir / "projector.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the child. Call from the event loop's thread: the parent-death signal
        follows the thread that forks (``procutil.die_with_parent``)."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.DEVNULL,
            env=self._env,
            # Own session: a Ctrl-C reaches the coordinator, which stops the child in order.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pidfile.write_text(str(self._proc.pid))

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    async def watch(self) -> None:
        """Restart the child whenever it exits, with a growing pause, until cancelled."""
        pause = FIRST_RESTART_S
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            # Polled, not waited for in a thread: that thread would hold a slot of the
            # loop's default pool for the coordinator's whole life.
            await asyncio.sleep(POLL_S)
            if self.running():
                continue
            log.warning("projector.process_exited", code=self.exit_code())
            if loop.time() - started >= HEALTHY_RUN_S:
                pause = FIRST_RESTART_S
            await asyncio.sleep(pause)
            pause = min(MAX_RESTART_S, 2 * pause)
            self.start()
            started = loop.time()
            self.restarts += 1
            log.info("projector.process_restarted", restarts=self.restarts)

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if await stop_child(proc, STOP_GRACE_S, kill_wait_s=STOP_GRACE_S):
            log.warning("projector.process_kill", pid=proc.pid)
        with contextlib.suppress(OSError):
            self.pidfile.unlink()


async def _project(database_url: str, mongo_url: str, interval_s: float) -> None:
    from pymongo.errors import PyMongoError

    from quantum_mesh.store.database import Database
    from quantum_mesh.store.mongo.projector import Projector

    db = Database(database_url)
    projector = Projector(db=db, mongo_url=mongo_url)
    loop, me = asyncio.get_running_loop(), asyncio.current_task()
    assert me is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, me.cancel)
    try:
        with contextlib.suppress(PyMongoError):  # unreachable now: ``run`` retries each tick
            await projector.connect()
        await projector.run(interval_s)
    finally:
        with contextlib.suppress(Exception):
            await projector.close()
        await db.dispose()


def main() -> None:
    from quantum_mesh.config import Settings
    from quantum_mesh.logs import configure_logging

    # The coordinator's environment is ours: log as it does (level, JSON, masked keys).
    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json, secrets=settings.secret_keys)
    database_url = os.environ.get(DATABASE_URL_ENV)
    mongo_url = os.environ.get(MONGO_URL_ENV)
    if not database_url or not mongo_url:
        sys.exit(f"{__name__}: {DATABASE_URL_ENV} and {MONGO_URL_ENV} must be set")
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM: the parent stops us
        asyncio.run(_project(database_url, mongo_url, float(os.environ.get(INTERVAL_ENV, "1.0"))))


if __name__ == "__main__":
    main()
