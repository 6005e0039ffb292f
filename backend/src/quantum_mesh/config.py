"""Settings for every subsystem, read once from ``QMESH_*`` environment variables and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All coordinator and node settings. See ``.env.example`` for documentation."""

    model_config = SettingsConfigDict(env_prefix="QMESH_", env_file=".env", extra="ignore")

    # --- process / API -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./var")
    log_level: str = "INFO"
    log_json: bool = False
    api_keys: str = ""
    max_request_bytes: int = 2_000_000
    rate_limit_per_minute: int = 600

    # --- data plane ------------------------------------------------------------------------
    database_url: str | None = None
    mongo_url: str | None = None

    # --- mesh ------------------------------------------------------------------------------
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 4001
    embedded_nodes: int = 3
    require_enrollment: bool = True
    advert_interval_s: float = 1.0
    advert_stale_after_s: float = 5.0
    peer_forget_after_s: float = 3600.0
    invoke_timeout_s: float = 30.0
    max_frame_bytes: int = 64 * 1024 * 1024

    # --- work queue and scheduling --------------------------------------------------------
    #: Unfinished jobs accepted at once; past this, submits get 429 with Retry-After.
    max_queued_jobs: int = Field(default=2000, ge=1)
    #: A unit of mesh work fails after this many executions that failed with real errors.
    max_unit_attempts: int = Field(default=4, ge=1)
    #: Longest a unit waits for a node with a free slot (busy/restarting nodes mean wait).
    unit_deadline_s: float = Field(default=600.0, gt=0)
    #: Longest a unit waits when no known node offers its service at all.
    capacity_wait_s: float = Field(default=30.0, ge=0)

    # --- coordinator worker pools -----------------------------------------------------------
    #: Threads for short CPU steps of running jobs (planning, composing, analysis).
    compute_threads: int = Field(default=2, ge=1)
    #: Threads for workload drivers (one per concurrently running workflow).
    driver_threads: int = Field(default=16, ge=1)
    #: Processes for input validation (circuit parsing, pyscf mean-field runs).
    validation_processes: int = Field(default=1, ge=1)

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

    # --- planner cost weights --------------------------------------------------------------
    cost_weight_latency: float = 1.0
    cost_weight_failure: float = 2.0
    cost_weight_transfer: float = 0.5
    cost_weight_load: float = 1.0
    cost_weight_fidelity: float = 3.0

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

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'qmesh.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
