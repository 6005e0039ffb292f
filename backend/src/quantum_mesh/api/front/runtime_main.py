"""The job runtime behind the API front: ``python -m quantum_mesh.api.front.runtime_main
--socket PATH`` (started by the front, with the front's environment)."""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket to serve the API on")
    args = parser.parse_args()

    import uvicorn

    from quantum_mesh.api.app import create_app
    from quantum_mesh.cli import (
        HTTP_KEEP_ALIVE_S,
        settle_garbage_collector,
        share_the_interpreter,
    )
    from quantum_mesh.config import Settings
    from quantum_mesh.logs import configure_logging

    settings = Settings()
    if settings.api_front_runtime_nice:
        # Before anything starts: the nodes, workers and threads inherit it.
        os.nice(settings.api_front_runtime_nice)
    configure_logging(
        settings.log_level, json=settings.log_json, secrets=settings.secret_keys, background=True
    )
    api = create_app(settings, behind_front=True)
    settle_garbage_collector()
    share_the_interpreter(settings.gil_switch_interval_ms)
    uvicorn.run(
        api,
        uds=args.socket,
        log_config=None,
        # The front logs each client request; here they would be logged twice, and the
        # front's hand-overs with them.
        access_log=False,
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
        ws="websockets-sansio",
    )


if __name__ == "__main__":
    main()
