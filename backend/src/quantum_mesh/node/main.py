"""``python -m quantum_mesh.node.main``: run one standalone service node.

Heavy imports stay inside the functions: spawned worker processes re-import this module as
``__mp_main__``, and should not pay for libp2p and Trio they never use.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantum_mesh.node.service import NodeConfig


def parse_args(argv: list[str] | None = None) -> NodeConfig:
    from quantum_mesh.logs import configure_logging
    from quantum_mesh.node.service import NodeConfig

    parser = argparse.ArgumentParser(prog="qmesh-node", description=__doc__)
    parser.add_argument("--bootstrap", default=None, help="/ip4/H/tcp/P/p2p/<coordinator id>")
    parser.add_argument("--key-file", type=Path, default=Path("./var/node.key"))
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--p2p-port", type=int, default=0)
    parser.add_argument("--name", default="node")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--noise-level", type=float, default=0.0)
    parser.add_argument("--fidelity", type=float, default=0.99)
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--advert-interval", type=float, default=1.0)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument(
        "--join-on-signal",
        action="store_true",
        help="start warm but off the mesh; dial the coordinator on SIGUSR1",
    )
    parser.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="PEER_ID",
        help="serve this peer too (repeatable); the --bootstrap coordinator is always served",
    )
    parser.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("QMESH_NODE_PRELOAD", "1") not in ("0", "false", "no"),
        help="import handler modules in each worker at startup (env QMESH_NODE_PRELOAD)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="lower this node's priority (and its workers') by this much (0-19)",
    )
    parser.add_argument("--log-level", default=os.environ.get("QMESH_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before the workers start: they inherit it
    configure_logging(args.log_level.upper())
    return NodeConfig(
        key_file=args.key_file,
        bootstrap=args.bootstrap,
        listen_host=args.listen_host,
        p2p_port=args.p2p_port,
        name=args.name,
        workers=args.workers,
        noise_level=args.noise_level,
        fidelity=args.fidelity,
        blas_threads=args.blas_threads,
        advert_interval_s=args.advert_interval,
        ready_file=args.ready_file,
        parent_pid=args.parent_pid,
        preload_handlers=args.preload,
        allowed_peers=tuple(args.allow_peer),
        join_on_signal=args.join_on_signal,
    )


def main(argv: list[str] | None = None) -> None:
    from quantum_mesh.node.service import run_node

    run_node(parse_args(argv))


if __name__ == "__main__":
    main()
