"""A finished benchmark as a downloadable bundle: JSON, CSV and PNG plots in one zip.

``report.json`` holds every row, the summary, the request and where it ran (versions,
machine, git commit); ``rows.csv`` the rows as a table; the plots are drawn with matplotlib's
headless Agg backend: wall time per mode and scenario with its spread, speedup against the
node count, quality against wall time, mesh share per mode and scenario. Built in a worker
(CPU work, never on the API loop) and deterministic for one benchmark.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import statistics
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from quantum_mesh.control import mesh_model

#: The model's plot, in bundles whose rows carry profiles to fit it to.
MODEL_PLOT = "model_scale.png"
#: Files every bundle holds (the plots only when there are rows).
PLOTS = ("wall_time.png", "speedup.png", "quality_vs_time.png", "mesh_share.png")
CSV_COLUMNS = (
    "mode",
    "nodes",
    "scenario",
    "repetition",
    "wall_s",
    "mesh_share",
    "retries",
    "quality",
    "scenario_detail",
)
_PACKAGES = ("quantum-mesh", "qiskit", "qiskit-aer", "qiskit-addon-sqd", "libp2p", "numpy")


def build_report(benchmark: dict[str, Any]) -> bytes:
    """The zip of one finished benchmark (``benchmark`` as ``GET /workflows/benchmarks/{id}``
    returns it)."""
    rows: list[dict[str, Any]] = list(benchmark.get("rows") or [])
    model = benchmark.get("model")
    if model is None and rows:
        model = mesh_model.validate(rows)
    figures = plots(rows)
    if model is not None:
        figures[MODEL_PLOT] = model_plot(model)
    document = {
        "benchmark_id": benchmark.get("benchmark_id"),
        "status": benchmark.get("status"),
        "request": benchmark.get("request"),
        "rows": rows,
        "summary": benchmark.get("summary"),
        # What each run's scenario did, one line per row (also the CSV's scenario_detail).
        "scenario_details": [scenario_detail(r) for r in rows],
        "environment": environment(),
        # Predicted, not measured: a discrete-event model fitted to these rows.
        "model": model,
        "generated_at": datetime.now(UTC).isoformat(),
        "files": ["report.json", "rows.csv", *figures],
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("report.json", json.dumps(document, indent=2, default=str))
        bundle.writestr("rows.csv", _csv(rows))
        for name, png in figures.items():
            bundle.writestr(name, png)
    return out.getvalue()


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The checkout's commit, read from ``.git`` (no subprocess); None outside a checkout."""
    root = Path(__file__).resolve().parents[4]
    head = root / ".git" / "HEAD"
    try:
        text = head.read_text().strip()
        if not text.startswith("ref: "):
            return text
        ref = text[5:]
        loose = root / ".git" / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (root / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "scenario_detail": scenario_detail(row)})
    return out.getvalue()


def _short(peer_id: Any) -> str:
    return f"…{str(peer_id)[-6:]}" if peer_id else "?"


def scenario_detail(row: dict[str, Any]) -> str:
    """One line saying what the row's scenario did (empty for baseline and centralized)."""
    if row.get("nodes_lost"):
        return "lost " + ", ".join(_short(p) for p in row["nodes_lost"])
    degraded = row.get("degraded")
    if degraded:
        return (
            f"{_short(degraded.get('node_id'))} degraded: refused "
            f"{degraded.get('reservations_refused', '?')} reservations, slowed "
            f"{degraded.get('calls_slowed', '?')} calls x{degraded.get('slowdown')}"
            + (f", noise {degraded['noise_level']}" if degraded.get("noise_level") else "")
        )
    link = row.get("link")
    if link and link.get("node_id"):
        shaped = ", ".join(
            f"{name} {link[name]}"
            for name in ("delay_ms", "jitter_ms", "rate_kbit", "loss", "rto_ms", "reset_share")
            if link.get(name) or name in ("delay_ms", "rate_kbit", "loss")
            if name in link
        )
        isolation = str(link.get("isolation") or "")
        where = "in " + isolation.split(",")[0] if isolation.startswith("netns") else "on 127.0.0.1"
        resets = link.get("connections_reset")
        return (
            f"{_short(link['node_id'])} {where} behind "
            f"{'tbf' if link.get('shaper') == 'tbf' else 'a relay'} ({shaped}): "
            f"{link.get('bytes_relayed')} bytes relayed"
            + (f", {resets} connections reset" if resets else "")
        )
    joined = row.get("joined")
    if joined and joined.get("node_id"):
        return (
            f"{joined.get('nodes_at_start')} to {joined.get('nodes_at_end')} nodes: "
            f"{_short(joined['node_id'])} joined at {joined.get('join_after_s')} s, usable at "
            f"{joined.get('usable_after_s')} s, "
            + ("got work" if joined.get("received_work") else "got no work")
        )
    return ""


def _label(row: dict[str, Any]) -> str:
    return "centralized" if row["mode"] == "centralized" else f"distributed-{row['nodes']}"


def plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """The four PNG plots; empty when there is nothing to draw."""
    if not rows:
        return {}
    import matplotlib

    matplotlib.use("Agg")  # headless: the coordinator has no display
    from matplotlib import pyplot as plt

    labels = list(dict.fromkeys(_label(r) for r in rows))
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    figures: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        figures[name] = buffer.getvalue()

    # 1. Wall time per mode and scenario: every run, and the median as a bar.
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(scenarios))
    for s_index, scenario in enumerate(scenarios):
        for m_index, label in enumerate(labels):
            walls = [r["wall_s"] for r in rows if _label(r) == label and r["scenario"] == scenario]
            if not walls:
                continue
            x = m_index + (s_index - (len(scenarios) - 1) / 2) * width
            ax.bar(x, statistics.median(walls), width * 0.9, alpha=0.5, color=f"C{s_index}",
                   label=scenario if m_index == 0 else None)  # fmt: skip
            ax.scatter([x] * len(walls), walls, color=f"C{s_index}", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("wall time (s): median bar, runs as dots")
    ax.set_title("Wall time per mode and scenario")
    ax.legend(title="scenario")
    save(fig, "wall_time.png")

    # 2. Speedup against the node count (medians, against centralized or the first mode).
    reference_label = "centralized" if "centralized" in labels else labels[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for s_index, scenario in enumerate(scenarios):
        ref = [
            r["wall_s"] for r in rows if _label(r) == reference_label and r["scenario"] == scenario
        ]
        points = []
        for label in labels:
            if not label.startswith("distributed-"):
                continue
            walls = [r["wall_s"] for r in rows if _label(r) == label and r["scenario"] == scenario]
            if ref and walls:
                points.append(
                    (int(label.split("-")[1]), statistics.median(ref) / statistics.median(walls))
                )
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", color=f"C{s_index}", label=scenario)
    counts = sorted({int(r["nodes"]) for r in rows if r["mode"] == "distributed"})
    if counts:
        ax.set_xticks(counts)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("nodes")
    ax.set_ylabel(f"speedup vs {reference_label} (median wall time)")
    ax.set_title("Speedup against node count")
    ax.legend(title="scenario")
    save(fig, "speedup.png")

    # 3. Quality against wall time, one colour per mode.
    fig, ax = plt.subplots(figsize=(6, 4))
    for m_index, label in enumerate(labels):
        points = [
            (r["wall_s"], r["quality"])
            for r in rows
            if _label(r) == label and r["quality"] is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, color=f"C{m_index}", label=label, s=18)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel(
        "quality (knapsack: ratio to optimum; SQD: -|error| mHa;\n"
        "circuit: Hellinger fidelity to Aer)"
    )
    ax.set_title("Quality against time")
    ax.legend()
    save(fig, "quality_vs_time.png")

    # 4. Mesh share per mode and scenario (medians).
    fig, ax = plt.subplots(figsize=(7, 4))
    for s_index, scenario in enumerate(scenarios):
        for m_index, label in enumerate(labels):
            shares = [
                r["mesh_share"]
                for r in rows
                if _label(r) == label and r["scenario"] == scenario and r["mesh_share"] is not None
            ]
            if shares:
                x = m_index + (s_index - (len(scenarios) - 1) / 2) * width
                ax.bar(x, 100 * statistics.median(shares), width * 0.9, color=f"C{s_index}",
                       label=scenario if m_index == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("mesh share of wall time (%), median")
    ax.set_title("Mesh share per mode and scenario")
    ax.legend(title="scenario")
    save(fig, "mesh_share.png")
    return figures


def model_plot(model: dict[str, Any]) -> bytes:
    """Predicted speedup and mesh share against node count (log scale), the measured
    speedups beside them; titled as a model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    predictions = model["predictions"]
    nodes = [p["nodes"] for p in predictions]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(nodes, [p["speedup"] for p in predictions], marker="o", label="speedup (model)")
    lean = model.get("predictions_what_if") or []
    if lean:
        ax.plot(
            [p["nodes"] for p in lean], [p["speedup"] for p in lean], marker=".", color="C2",
            label=f"speedup (model, coordinator at {1000 * model['what_if_dispatch_s']:g} ms/unit)",
        )  # fmt: skip
    checks = model["validation"]
    ax.scatter(
        [c["nodes"] for c in checks],
        [c["measured_speedup"] for c in checks],
        color="black",
        zorder=3,
        label="speedup (measured)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("nodes (log scale)")
    ax.set_ylabel("speedup vs centralized")
    share = ax.twinx()
    share.plot(
        nodes, [100 * p["mesh_share"] for p in predictions], color="C1", linestyle="--",
        label="mesh share % (model)",
    )  # fmt: skip
    share.set_ylabel("mesh share of wall time (%)")
    lines = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    ax.set_title(f"MODEL, not measured: {model['label']}", fontsize=9)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
