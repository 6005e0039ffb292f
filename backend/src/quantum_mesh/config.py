"""Settings for every subsystem, read once from ``QMESH_*`` environment variables and ``.env``."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Roles a principal may have (docs/security.md, "Principals, roles and quotas").
ROLES = ("admin", "user")
_PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class PrincipalSpec:
    """One principal as configured: its name, role, API keys and quota overrides (``None``:
    the settings' default for its role; 0: no limit)."""

    name: str
    role: str
    keys: tuple[str, ...]
    max_active_jobs: int | None = None
    max_active_reservations: int | None = None


def legacy_admin_name(key: str) -> str:
    """The principal name of a key listed in ``QMESH_API_KEYS``: stable for a given key."""
    return f"admin-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _quota(entry: dict[str, Any], field: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"QMESH_PRINCIPALS: {field} must be an integer >= 0")
    return value


def _principal_entries(value: str) -> list[dict[str, Any]]:
    """``name:role:key,…`` or a JSON list of ``{"name", "role", "key"|"keys", quotas…}``."""
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            entries = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"QMESH_PRINCIPALS is not valid JSON: {exc.msg}") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("QMESH_PRINCIPALS as JSON must be a list of objects")
        out = []
        for e in entries:
            keys = e.get("keys", [e["key"]] if "key" in e else [])
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError("QMESH_PRINCIPALS: keys must be a list of strings")
            out.append({**e, "keys": keys})
        return out
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3:
            raise ValueError(
                "QMESH_PRINCIPALS entries are name:role:key (role admin or user), "
                f"got one with {len(parts)} part(s)"
            )
        out.append({"name": parts[0].strip(), "role": parts[1].strip(), "keys": [parts[2]]})
    return out


def parse_principals(api_keys: list[str], principals: str) -> list[PrincipalSpec]:
    """Every configured principal: each ``QMESH_API_KEYS`` key is an admin of its own, then
    ``QMESH_PRINCIPALS`` (entries with one name are merged: several keys, e.g. for rotation).
    Raises ``ValueError`` naming the problem."""
    entries = [{"name": legacy_admin_name(k), "role": "admin", "keys": [k]} for k in api_keys]
    entries += _principal_entries(principals)
    merged: dict[str, dict[str, Any]] = {}
    owner_of_key: dict[str, str] = {}
    for e in entries:
        name, role = e.get("name"), e.get("role")
        if not isinstance(name, str) or not _PRINCIPAL_NAME.match(name):
            raise ValueError(
                f"QMESH_PRINCIPALS: bad principal name {name!r} (letters, digits, _.@-, "
                "at most 64 characters)"
            )
        if role not in ROLES:
            raise ValueError(f"QMESH_PRINCIPALS: role of {name!r} must be admin or user")
        keys = [k.strip() for k in e["keys"]]
        if not keys or not all(keys):
            raise ValueError(f"QMESH_PRINCIPALS: principal {name!r} needs a non-empty key")
        for key in keys:
            if owner_of_key.setdefault(key, name) != name:
                raise ValueError(
                    f"QMESH_PRINCIPALS: one key is given to both {owner_of_key[key]!r} and {name!r}"
                )
        spec = merged.setdefault(name, {"role": role, "keys": [], "jobs": None, "res": None})
        if spec["role"] != role:
            raise ValueError(f"QMESH_PRINCIPALS: principal {name!r} is given two roles")
        spec["keys"] += [k for k in keys if k not in spec["keys"]]
        jobs, res = _quota(e, "max_active_jobs"), _quota(e, "max_active_reservations")
        spec["jobs"] = jobs if jobs is not None else spec["jobs"]
        spec["res"] = res if res is not None else spec["res"]
    return [
        PrincipalSpec(
            name=name,
            role=v["role"],
            keys=tuple(v["keys"]),
            max_active_jobs=v["jobs"],
            max_active_reservations=v["res"],
        )
        for name, v in merged.items()
    ]


class Settings(BaseSettings):
    """All coordinator and node settings. See ``.env.example`` for documentation."""

    # hide_input_in_errors: a bad setting must not echo keys or database passwords.
    model_config = SettingsConfigDict(
        env_prefix="QMESH_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # --- process / API -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./var")
    log_level: str = "INFO"
    log_json: bool = False
    #: One INFO line per HTTP request (uvicorn's access log).
    access_log: bool = True
    api_keys: str = ""
    max_request_bytes: int = 2_000_000
    rate_limit_per_minute: int = 600

    # --- principals, roles, quotas and authentication (docs/security.md) -------------------
    #: Principals with roles: ``name:role:key,…`` or a JSON list (keys of QMESH_API_KEYS
    #: are admins). No key at all = no authentication, HTTP on loopback only.
    principals: str = ""
    #: Exact paths answered without a key (comma-separated).
    open_paths: str = "/health,/api/v1/health"
    #: Unfinished jobs one ``user`` principal may have at once (0 = no limit; admins have
    #: none unless their QMESH_PRINCIPALS entry sets max_active_jobs).
    quota_active_jobs: int = Field(default=100, ge=0)
    #: Direct reservations (POST /reservations) one principal may hold at once (0 = no limit).
    quota_active_reservations: int = Field(default=2, ge=0)
    #: Failed authentications allowed per client address per minute; past it 429 (0 = off).
    auth_failures_per_minute: int = Field(default=10, ge=0)
    #: Lifetime of a WebSocket token from POST /api/v1/auth/ws-token.
    ws_token_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    #: Serve a non-loopback QMESH_HOST although no key is configured (then every client
    #: that reaches the port is admin). Off: without keys the API binds 127.0.0.1.
    allow_unauthenticated_bind: bool = False
    #: Serve the API from a front process apart from the job runtime: circuit submits are
    #: validated, journalled (fsync'd) and answered there, everything else is forwarded to
    #: the runtime over a Unix socket (docs/operations.md, "The API front"). False: one
    #: process serves the API and runs the jobs, as before.
    api_front: bool = True
    #: Seconds the front waits for the runtime to start (nodes, database, migrations).
    api_front_start_timeout_s: float = Field(default=180.0, gt=0)
    #: Niceness of the runtime process behind the front (its nodes go lower still), so
    #: that the front gets a core at once when a request arrives.
    api_front_runtime_nice: int = Field(default=5, ge=0, le=19)

    # --- data plane ------------------------------------------------------------------------
    database_url: str | None = None
    mongo_url: str | None = None
    #: Catch the MongoDB projections up in a process of their own (``store/mongo/
    #: projection_process.py``), not on the API loop, where that work held the GIL.
    projector_process: bool = True

    # --- mesh ------------------------------------------------------------------------------
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 4001
    embedded_nodes: int = 3
    #: Niceness of embedded nodes and their workers (0 = the coordinator's own priority).
    #: They share the coordinator's cores, and the coordinator is what bounds throughput and
    #: answers clients: given the cores first, it completed more Bell jobs with a shorter
    #: submit tail (docs/operations.md, "Embedded nodes yield the cores").
    embedded_node_nice: int = Field(default=10, ge=0, le=19)
    require_enrollment: bool = True
    advert_interval_s: float = 1.0
    advert_stale_after_s: float = 5.0
    peer_forget_after_s: float = 3600.0
    invoke_timeout_s: float = 30.0
    max_frame_bytes: int = 64 * 1024 * 1024
    #: Big arrays to and from nodes on this host go through shared memory (/dev/shm), not
    #: the encrypted stream (``mesh/hostlocal.py``); nodes elsewhere always use the stream.
    mesh_shared_memory: bool = True
    #: Arrays smaller than this stay on the stream even on this host.
    mesh_shared_memory_min_bytes: int = Field(default=1024 * 1024, ge=0)

    # --- work queue and scheduling --------------------------------------------------------
    #: Unfinished jobs accepted at once; past this, submits get 429 with Retry-After.
    max_queued_jobs: int = Field(default=300, ge=1)
    #: Jobs running at once (compiling, reserving, executing); the other accepted jobs wait
    #: QUEUED and start in the order they came: under overload, fewer jobs contend for the API
    #: loop at once (docs/control-plane.md, "Running jobs").
    max_running_jobs: int = Field(default=64, ge=1)
    #: Writes waiting for the database beyond which submits get 429 at once.
    max_write_backlog: int = Field(default=500, ge=1)
    #: A unit of mesh work fails after this many executions that failed with real errors.
    max_unit_attempts: int = Field(default=4, ge=1)
    #: Send a unit's reservation with its work to nodes that take one (``inline_reserve``):
    #: one round trip per unit instead of two. Off: every unit negotiates first.
    inline_reservations: bool = True
    #: Let one circuit fragment hold operations of several services (``h; cx``) when a node
    #: offers them all: fewer node calls per circuit. Off: one service type per fragment.
    fuse_fragments: bool = True
    #: Longest a unit waits for a node with a free slot (busy/restarting nodes mean wait).
    unit_deadline_s: float = Field(default=600.0, gt=0)
    #: Longest a unit waits when no known node offers its service at all.
    capacity_wait_s: float = Field(default=30.0, ge=0)

    # --- coordinator worker pools -----------------------------------------------------------
    #: How long (ms) a thread may hold the coordinator's GIL while another waits for it
    #: (``sys.setswitchinterval``; CPython's own is 5). The database writer, the libp2p
    #: thread and the peer log give the GIL up for every statement, send and write, and wait
    #: that long to get it back while the API loop computes (docs/operations.md, "The
    #: database writer waits for the GIL"). 0 keeps CPython's.
    gil_switch_interval_ms: float = Field(default=0.5, ge=0)
    #: Threads for short CPU steps of running jobs (planning, composing, analysis).
    compute_threads: int = Field(default=2, ge=1)
    #: Threads for workload drivers (one per concurrently running workflow).
    driver_threads: int = Field(default=16, ge=1)
    #: Processes for input validation (circuit parsing, pyscf mean-field runs).
    validation_processes: int = Field(default=1, ge=1)
    #: Longest one validation may run before the input is refused (422) and its worker killed.
    validation_timeout_s: float = Field(default=60.0, gt=0)

    # --- input limits (docs/security.md) ----------------------------------------------------
    #: A circuit may declare at most this many qubits (registers and physical qubits).
    max_circuit_qubits: int = Field(default=20, ge=1)
    #: ... and at most this many classical bits.
    max_circuit_clbits: int = Field(default=64, ge=0)
    #: Operations after gate-definition expansion and register broadcasting, measurements
    #: included (each other statement counts one).
    max_circuit_operations: int = Field(default=20_000, ge=1)
    #: Gate definitions may nest this deep (a gate calling only library gates has depth 1).
    max_gate_definition_depth: int = Field(default=8, ge=1)
    #: Fragments (node calls) one circuit may be split into.
    max_circuit_fragments: int = Field(default=2_000, ge=1)
    #: Budget (bytes of JSON) of a circuit job's stored result, ``fragment_results`` and
    #: ``quantum_result`` together (docs/security.md, "Bounded results"). Up to 12 qubits a
    #: result is whole; above, distributions keep their most likely entries and the
    #: statevector is a binary artifact (``GET /jobs/{id}/artifacts/statevector``).
    max_result_bytes: int = Field(default=4 * 1024 * 1024, ge=65_536)

    # --- planner cost weights --------------------------------------------------------------
    cost_weight_latency: float = 1.0
    cost_weight_failure: float = 2.0
    cost_weight_transfer: float = 0.5
    cost_weight_load: float = 1.0
    cost_weight_fidelity: float = 3.0

    #: ``/ready`` answers 503 until at least this many nodes are usable (fresh and trusted).
    min_ready_nodes: int = Field(default=1, ge=0)

    # --- node ------------------------------------------------------------------------------
    node_workers: int = Field(default=1, ge=1)
    node_noise_level: float = Field(default=0.0, ge=0.0, le=1.0)
    node_fidelity: float = Field(default=0.99, ge=0.0, le=1.0)
    node_blas_threads: int = Field(default=1, ge=1)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @model_validator(mode="after")
    def _check_auth_settings(self) -> Settings:
        self.principal_specs()  # raises ValueError naming a bad entry, at start-up
        for path in self.open_path_set:
            if not path.startswith("/"):
                raise ValueError(f"QMESH_OPEN_PATHS: {path!r} is not a path (starts with /)")
        return self

    def principal_specs(self) -> list[PrincipalSpec]:
        """Every configured principal (QMESH_API_KEYS as admins, then QMESH_PRINCIPALS)."""
        return parse_principals(self.api_key_list, self.principals)

    @property
    def auth_enabled(self) -> bool:
        """True when at least one API key is configured."""
        return bool(self.secret_keys)

    @property
    def secret_keys(self) -> list[str]:
        """Every configured API key, of both forms (masked in the logs)."""
        return [k for spec in self.principal_specs() for k in spec.keys]

    @property
    def open_path_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.open_paths.split(",") if p.strip())

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'qmesh.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
