"""Benchmark scenario names and settings, checked before a benchmark job exists."""

from __future__ import annotations

from typing import Any

from quantum_mesh.control import netns
from quantum_mesh.control.workflows.params import finite_number
from quantum_mesh.errors import InvalidInput

#: Scenario names of the contract, and the ones this build can set up.
CONTRACT_SCENARIOS = (
    "baseline",
    "latency",
    "bandwidth",
    "loss",
    "degraded_node",
    "node_loss",
    "node_join",
)
AVAILABLE_SCENARIOS = CONTRACT_SCENARIOS
#: Scenarios whose node reaches the coordinator through the link relay.
LINK_SCENARIOS = frozenset({"latency", "bandwidth", "loss"})
#: Scenarios that disturb the mesh every other job uses too: admins only.
ADMIN_SCENARIOS = frozenset({"degraded_node", "node_loss", "node_join", *LINK_SCENARIOS})
#: The row field each scenario records.
ROW_FIELDS = {
    "node_loss": "nodes_lost",
    "degraded_node": "degraded",
    "node_join": "joined",
    **dict.fromkeys(LINK_SCENARIOS, "link"),
}

#: Settings of the scenarios that take any: ``{name: (default, minimum, maximum)}`` (a
#: default of None: unchanged unless given).
SETTINGS: dict[str, dict[str, tuple[float | None, float, float]]] = {
    "degraded_node": {
        "refuse_share": (0.5, 0.0, 1.0),
        "slowdown": (3.0, 1.0, 20.0),
        "noise_level": (None, 0.0, 1.0),
    },
    "latency": {
        "delay_ms": (20.0, 0.0, 2000.0),
        "jitter_ms": (0.0, 0.0, 2000.0),
    },
    "bandwidth": {"rate_kbit": (1000.0, 8.0, 1_000_000.0)},
    "loss": {
        "loss": (0.05, 0.0, 0.5),
        "rto_ms": (200.0, 1.0, 5000.0),
        "reset_share": (0.0, 0.0, 0.1),
    },
}


def scenarios_of(body: dict[str, Any]) -> list[str]:
    scenarios = body.get("scenarios", ["baseline"])
    if not isinstance(scenarios, list) or not scenarios or len(set(scenarios)) != len(scenarios):
        raise InvalidInput(
            "scenarios must be a non-empty list of distinct scenario names",
            details={"field": "scenarios", "valid": list(CONTRACT_SCENARIOS)},
        )
    for name in scenarios:
        if name not in CONTRACT_SCENARIOS:
            raise InvalidInput(
                f"unknown scenario {name!r}; scenarios are {list(CONTRACT_SCENARIOS)}",
                details={"field": "scenarios", "valid": list(CONTRACT_SCENARIOS)},
            )
        if name not in AVAILABLE_SCENARIOS:
            raise InvalidInput(
                f"scenario {name!r} is not available in this build; available: "
                f"{list(AVAILABLE_SCENARIOS)}",
                details={"field": "scenarios", "available": list(AVAILABLE_SCENARIOS)},
            )
    if "bandwidth" in scenarios and (reason := netns.unavailable_reason()) is not None:
        # A cap in a user-space relay on 127.0.0.1 is not a narrower link (the kernel's
        # loopback and the node's other paths are not capped): refused, not faked.
        raise InvalidInput(
            "scenario 'bandwidth' needs a network namespace shaped by the kernel's tbf, "
            f"which this coordinator cannot make ({reason}; it needs root and iproute2)",
            details={"field": "scenarios", "scenario": "bandwidth", "reason": reason},
        )
    return list(scenarios)


def scenario_params_of(body: dict[str, Any], scenarios: list[str]) -> dict[str, Any]:
    """``scenario_params``: ``{"degraded_node": {"refuse_share", "slowdown", "noise_level"},
    "latency": {"delay_ms", "jitter_ms"}, "bandwidth": {"rate_kbit"}, "loss": {"loss",
    "rto_ms", "reset_share"}}``, each setting optional (:data:`SETTINGS`).
    Returns the full settings of the requested scenarios that take any."""
    given = body.get("scenario_params") or {}
    if not isinstance(given, dict):
        raise InvalidInput(
            "scenario_params must be an object keyed by scenario name",
            details={"field": "scenario_params"},
        )
    for name in given:
        if name not in SETTINGS:
            raise InvalidInput(
                f"scenario_params.{name}: only {' and '.join(SETTINGS)} take parameters",
                details={"field": f"scenario_params.{name}", "valid": sorted(SETTINGS)},
            )
    return {name: _settings(name, given.get(name) or {}) for name in SETTINGS if name in scenarios}


def _settings(scenario: str, raw: Any) -> dict[str, Any]:
    table = SETTINGS[scenario]
    where = f"scenario_params.{scenario}"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object", details={"field": where})
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise InvalidInput(
            f"{where}.{unknown[0]} is not a setting; valid: {sorted(table)}",
            details={"field": f"{where}.{unknown[0]}", "valid": sorted(table)},
        )
    settings: dict[str, Any] = {name: default for name, (default, _, _) in table.items()}
    for name, value in raw.items():
        _, low, high = table[name]
        number = finite_number(value, high)
        if number is None or not low <= number <= high:
            raise InvalidInput(
                f"{where}.{name} must be a number in [{low:g}, {high:g}]",
                details={"field": f"{where}.{name}", "minimum": low, "maximum": high},
            )
        settings[name] = number
    return settings
