"""A live coordinator shared by one test module (real subprocess, real PostgreSQL).

A module may set ``EMBEDDED_NODES`` to change how many embedded service nodes it gets, and
``COORD_ENV`` (a dict) to add ``QMESH_*`` settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.live import LiveCoordinator

DEFAULT_EMBEDDED_NODES = 3


@pytest.fixture(scope="module")
def coord(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, module_pg_url: str
) -> Iterator[LiveCoordinator]:
    nodes = getattr(request.module, "EMBEDDED_NODES", DEFAULT_EMBEDDED_NODES)
    live = LiveCoordinator(
        tmp_path_factory.mktemp("coord"),
        database_url=module_pg_url,
        embedded_nodes=nodes,
        env=getattr(request.module, "COORD_ENV", None),
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()
