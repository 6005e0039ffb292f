"""The ``qmesh`` command line: coordinator, node, keygen, submit, watch."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    help="quantum-mesh: a distributed quantum-computing service over libp2p.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _setup(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    """Structured logs go to stderr for every command, so stdout stays for results."""
    from quantum_mesh.config import Settings
    from quantum_mesh.logs import configure_logging

    _DEBUG["on"] = debug
    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json, secrets=settings.secret_keys)


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@app.command()
def coordinator(
    host: Annotated[
        str | None, typer.Option(help="HTTP bind address [QMESH_HOST, 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [QMESH_PORT, 8000]")] = None,
    p2p_port: Annotated[
        int | None,
        typer.Option("--p2p-port", help="libp2p TCP port, 0 = any free [QMESH_P2P_PORT, 4001]"),
    ] = None,
    embedded_nodes: Annotated[
        int | None,
        typer.Option("--embedded-nodes", help="service nodes run inside [QMESH_EMBEDDED_NODES, 3]"),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="database, keys and logs [QMESH_DATA_DIR, ./var]"),
    ] = None,
) -> None:
    """Run the FastAPI control plane, the coordinator's libp2p host and embedded nodes.

    Options given on the command line win over QMESH_* variables and .env; those win over
    the defaults."""
    from quantum_mesh.api.security import bind_decision
    from quantum_mesh.config import Settings
    from quantum_mesh.startup import (
        StartRefused,
        check_ports_free,
        lock_data_dir,
        wait_for_previous_runtime,
    )

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "p2p_port": p2p_port,
        "embedded_nodes": embedded_nodes,
        "data_dir": data_dir,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    # Without a key every caller is admin: the API is served on loopback only (unless
    # QMESH_ALLOW_UNAUTHENTICATED_BIND), and the operator is told so on the console.
    bind_host, note = bind_decision(settings)
    # Before anything starts (logging, the app's imports, nodes, the document server): a
    # second start with the same data directory or ports must leave the running coordinator
    # untouched, and say so in one line.
    try:
        data_dir_lock = lock_data_dir(settings.data_dir)
        wait_for_previous_runtime(settings.data_dir)
        check_ports_free(bind_host, {"HTTP": settings.port})
        check_ports_free(settings.p2p_host, {"libp2p": settings.p2p_port})
    except StartRefused as refusal:
        typer.echo(f"qmesh coordinator: {refusal}", err=True)
        raise typer.Exit(2) from None

    import uvicorn

    from quantum_mesh.logs import configure_logging, get_logger

    configure_logging(
        settings.log_level,
        json=settings.log_json,
        secrets=settings.secret_keys,
        background=True,
    )
    if note is not None:
        typer.echo(f"qmesh coordinator: {note}", err=True)
        get_logger("quantum_mesh.cli").warning(
            "coordinator.bind", host=bind_host, requested_host=settings.host, message=note
        )
    front = None
    if settings.api_front:
        # The runtime process reads its settings as this one did: pass on what the command
        # line gave.
        for name, value in given.items():
            if value is not None:
                os.environ[f"QMESH_{name.upper()}"] = str(value)
        # Launched before the front imports its own modules: both import at once.
        from quantum_mesh.api.front.runtime_process import RuntimeProcess, runtime_socket

        runtime = RuntimeProcess(settings, runtime_socket(settings))
        runtime.launch()
        from quantum_mesh.api.front.app import create_front_app

        api: Any = create_front_app(settings, runtime)
        front = api.front
    else:
        from quantum_mesh.api.app import create_app

        api = create_app(settings)
    settle_garbage_collector()
    share_the_interpreter(settings.gil_switch_interval_ms)
    server = uvicorn.Server(
        uvicorn.Config(
            api,
            host=bind_host,
            port=settings.port,
            log_config=None,
            access_log=settings.access_log,
            # Longer than clients keep idle connections (httpx, requests: 5 s), so the
            # client always closes first: with uvicorn's own 5 s both sides raced, and a
            # request sent on a connection the server was closing failed (ReadError) under
            # load.
            timeout_keep_alive=HTTP_KEEP_ALIVE_S,
            ws="websockets-sansio",
        )
    )
    if front is not None:
        front.stop_serving = lambda: setattr(server, "should_exit", True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    data_dir_lock.close()
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run: the app did not start (its log says why)
    if front is not None and front.runtime_exit is not None:
        typer.echo(
            f"qmesh coordinator: the job runtime exited with code {front.runtime_exit}", err=True
        )
        raise typer.Exit(1)


#: Seconds the coordinator keeps an idle HTTP connection open.
HTTP_KEEP_ALIVE_S = 30
#: Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off what lives as long as the process.

    The imports (Qiskit, SQLAlchemy, FastAPI, libp2p) leave millions of objects that every
    full collection would scan again: measured under load, collections took a tenth of the
    API loop's time. Frozen, they are skipped (reference counting still frees them), and
    young collections run less often.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def share_the_interpreter(switch_interval_ms: float) -> None:
    """Let threads that wait for the GIL get it back sooner (0: CPython's 5 ms).

    The coordinator's database writer runs a few statements per write, and each gives the GIL
    up while SQLite or PostgreSQL works; under load it then waits for the API loop to reach
    the switch interval before it may go on. Measured at 200 submits/s: its writes took 4x
    their CPU time in wall time, and the writer, busy 94 % of the time, bounded jobs/s."""
    if switch_interval_ms > 0:
        sys.setswitchinterval(switch_interval_ms / 1000)


@app.command()
def node(
    bootstrap: Annotated[str, typer.Option(help="coordinator multiaddr /ip4/…/tcp/…/p2p/<id>")],
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="identity (its peer log goes beside it) "
            "[$QMESH_NODE_DATA_DIR/node.key, ~/.local/share/qmesh/nodes/NAME/node.key]",
        ),
    ] = None,
    p2p_port: Annotated[int, typer.Option("--p2p-port")] = 0,
    name: Annotated[str, typer.Option()] = "node",
    workers: Annotated[int | None, typer.Option(min=1, help="[QMESH_NODE_WORKERS, 1]")] = None,
    noise_level: Annotated[
        float | None,
        typer.Option("--noise-level", min=0.0, max=1.0, help="[QMESH_NODE_NOISE_LEVEL, 0]"),
    ] = None,
    fidelity: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="advertised [QMESH_NODE_FIDELITY, 0.99]")
    ] = None,
    listen_host: Annotated[str, typer.Option("--listen-host")] = "127.0.0.1",
    ready_file: Annotated[Path | None, typer.Option("--ready-file")] = None,
) -> None:
    """Run a standalone service node that joins the mesh at BOOTSTRAP."""
    from quantum_mesh.config import Settings
    from quantum_mesh.logs import configure_logging
    from quantum_mesh.node.service import NodeConfig, run_node

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json, secrets=settings.secret_keys)
    from quantum_mesh.startup import default_node_key

    run_node(
        NodeConfig(
            key_file=key_file or default_node_key(name),
            bootstrap=bootstrap,
            listen_host=listen_host,
            p2p_port=p2p_port,
            name=name,
            workers=workers if workers is not None else settings.node_workers,
            noise_level=noise_level if noise_level is not None else settings.node_noise_level,
            fidelity=fidelity if fidelity is not None else settings.node_fidelity,
            blas_threads=settings.node_blas_threads,
            ready_file=ready_file,
        )
    )


@app.command()
def keygen(
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="[the default of `qmesh node --name NAME`]"),
    ] = None,
    name: Annotated[str, typer.Option(help="the node name whose default key to use")] = "node",
) -> None:
    """Create (or read) a node identity and print its peer ID."""
    from quantum_mesh.mesh.identity import peer_id_from_key_file
    from quantum_mesh.startup import default_node_key

    typer.echo(peer_id_from_key_file(key_file or default_node_key(name)))


#: Set by ``--debug``: show tracebacks instead of one-line messages.
_DEBUG = {"on": False}
ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api", envvar="QMESH_API", help="coordinator URL [QMESH_HOST:QMESH_PORT, 127.0.0.1:8000]"
    ),
]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", envvar="QMESH_API_KEY")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the whole JSON document")]


def _fail(error: Exception) -> NoReturn:
    """One line on stderr and exit 1; the traceback only with ``--debug``."""
    if _DEBUG["on"]:
        raise error
    typer.echo(f"qmesh: {error}", err=True)
    raise typer.Exit(1)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, readable=True)],
    shots: Annotated[int, typer.Option(min=1)] = 1024,
    seed: Annotated[int | None, typer.Option()] = None,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    api: ApiOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit an OpenQASM file and print its job ID; with --wait, follow it to the end."""
    from quantum_mesh.client import ClientError, call, default_api, session

    api = api or default_api()
    body: dict[str, Any] = {"circuit": file.read_text(), "shots": shots}
    if seed is not None:
        body["seed"] = seed
    try:
        with session(api, api_key) as client:
            answer = call(client, "POST", "/api/v1/circuits/submit", json=body)
    except ClientError as error:
        _fail(error)
    typer.echo(json.dumps(answer, indent=2) if as_json and not wait else answer["job_id"])
    if wait:
        watch(answer["job_id"], api=api, api_key=api_key, as_json=as_json)


@app.command()
def watch(
    job_id: str,
    api: ApiOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a job live (WebSocket) with a progress display, then summarise its result."""
    from quantum_mesh.client import ClientError, call, default_api, session, summary

    api = api or default_api()
    try:
        with session(api, api_key) as client:
            job = call(client, "GET", f"/api/v1/jobs/{job_id}")
            if job.get("status") not in TERMINAL:
                asyncio.run(_follow(job_id, api, api_key))
            job = call(client, "GET", f"/api/v1/jobs/{job_id}")
    except ClientError as error:
        _fail(error)
    typer.echo(json.dumps(job, indent=2) if as_json else "\n".join(summary(job)))
    if job.get("status") != "COMPLETED":
        raise typer.Exit(1)


#: WebSocket close codes of the job stream (docs/control-plane.md) and what they mean.
_CLOSE_REASONS = {
    4401: "the coordinator needs an API key: pass --api-key or set QMESH_API_KEY",
    4403: "this API key may not watch that job",
    4404: "no such job",
    4429: "too many live streams open; try again shortly",
}


async def _follow(job_id: str, api: str, api_key: str | None) -> None:
    """Show the job's transitions until it ends (ClientError for a refused stream)."""
    import websockets
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from quantum_mesh.client import ClientError

    console = Console(stderr=True)
    url = api.replace("http", "ws", 1) + f"/api/v1/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{job_id[:8]} …", total=None)
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                async for raw in ws:
                    msg = json.loads(raw)
                    if "error" in msg and "status" not in msg:
                        raise ClientError(str(msg["error"].get("message")))
                    if msg.get("type") == "keepalive" or "status" not in msg:
                        continue
                    prog = msg.get("progress") or {}
                    done = prog.get("fragments_done", prog.get("done"))
                    total = prog.get("fragments_total", prog.get("total"))
                    progress.update(
                        task,
                        description=f"{job_id[:8]} {msg['status']}",
                        completed=done or 0,
                        total=total,
                    )
                    if msg["status"] in TERMINAL:
                        return
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code in _CLOSE_REASONS:
                raise ClientError(_CLOSE_REASONS[code]) from closed
            raise ClientError(f"the job stream closed ({code})") from closed
        except websockets.InvalidStatus as refused:
            status = refused.response.status_code
            reason = _CLOSE_REASONS.get(4000 + status, f"stream refused ({status})")
            raise ClientError(reason) from refused
        except OSError as error:
            raise ClientError(f"cannot reach the coordinator at {api}: {error}") from error


@app.command("log")
def show_log(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="log files (default: all under --data-dir)")
    ] = None,
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("./var"),
    job: Annotated[str | None, typer.Option(help="only this job")] = None,
    peer: Annotated[str | None, typer.Option(help="only this peer (prefix)")] = None,
    event: Annotated[str | None, typer.Option(help="event name, or a prefix ending in *")] = None,
    since: Annotated[datetime | None, typer.Option(help="ISO time, UTC")] = None,
    until: Annotated[datetime | None, typer.Option(help="ISO time, UTC")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Read the fsync'd JSONL peer logs of the coordinator and its nodes."""
    from quantum_mesh.store.peerlog import PeerLog, format_entries

    # The coordinator logs under logs/, embedded nodes beside their keys under nodes/.
    files = paths or sorted(data_dir.rglob("*.jsonl"))
    if not files:
        typer.echo(f"No peer logs under {data_dir}", err=True)
        raise typer.Exit(1)
    entries = PeerLog.read(
        files, job_id=job, peer=peer, since=_utc(since), until=_utc(until), event=event
    )
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry))
    else:
        typer.echo(format_entries(entries))


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


bench = typer.Typer(help="Benchmark results: reports of finished benchmarks.")
app.add_typer(bench, name="bench")


@bench.command("report")
def bench_report(
    benchmark_id: Annotated[str, typer.Argument(help="a finished benchmark's ID")],
    out: Annotated[Path, typer.Option("--out", help="folder to write the report into")],
    api: ApiOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Download a finished benchmark's report (JSON, CSV, PNG plots) into --out."""
    import io
    import zipfile

    from quantum_mesh.client import ClientError, default_api, download, session

    try:
        with session(api or default_api(), api_key) as client:
            data = download(client, f"/api/v1/workflows/benchmarks/{benchmark_id}/report")
    except ClientError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        names = bundle.namelist()
        if any(Path(n).is_absolute() or ".." in Path(n).parts for n in names):
            _fail(ValueError("the report names files outside its folder"))
        bundle.extractall(out)
    for name in names:
        typer.echo(str(out / name))


projections = typer.Typer(help="MongoDB projections (rebuildable from the Postgres events).")
app.add_typer(projections, name="projections")


@projections.command("rebuild")
def rebuild_projections_cmd() -> None:
    """Drop every event-fed projection and replay it from the database (QMESH_DATABASE_URL,
    QMESH_MONGO_URL)."""
    from quantum_mesh.config import Settings
    from quantum_mesh.store.mongo.projector import rebuild_projections

    settings = Settings()
    if not settings.mongo_url:
        typer.echo(
            "Set QMESH_MONGO_URL to the MongoDB to rebuild (the embedded store's URL is "
            "logged by the coordinator at start-up).",
            err=True,
        )
        raise typer.Exit(2)
    replayed = asyncio.run(
        rebuild_projections(settings.resolved_database_url(), settings.mongo_url)
    )
    typer.echo(f"replayed {replayed} events")


def main() -> None:  # pragma: no cover - console entry point wrapper
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
