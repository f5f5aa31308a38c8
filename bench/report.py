"""The benchmark's outputs: results JSON, the charts, and the README's table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: The targets, checked against the measured figures: lookups against bare falcon
#: (at least this share of its throughput), growth from the smallest registry to the
#: largest, health checks a second on the default store, memory store bytes per instance.
LOOKUP_RATIO = {
    "simple": 0.90, "sqlite": 0.90,
    "redis": 0.80, "redis+cache": 0.80, "etcd": 0.80, "etcd+cache": 0.80,
}  # fmt: skip
GROWTH = 1.25
HEARTBEATS_PER_SECOND = 2000
BYTES_PER_INSTANCE = 1024
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def growth(points: list[dict[str, Any]], figure: str) -> float:
    """Cost at the largest registry over cost at the smallest."""
    return float(points[-1][figure] / points[0][figure])


def draw(results: dict[str, Any], path: Path) -> None:
    """Two panels: throughput against the baseline, and cost as the registry grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    http = results["http"]
    scenarios = ["lookup", "choose", "heartbeat"]
    width = 0.8 / len(scenarios)
    for offset, scenario in enumerate(scenarios):
        # A comparison run measures some scenarios only: its missing bars are left out.
        measured = [(i, run) for i, run in enumerate(http) if scenario in run["scenarios"]]
        xs = [i + (offset - 1) * width for i, _ in measured]
        ratios = [run["scenarios"][scenario]["ratio"] for _, run in measured]
        bars = left.bar(xs, ratios, width, label=scenario)
        left.bar_label(bars, fmt="%.2f", fontsize=7)
    left.axhline(0.9, color="grey", linestyle="--", linewidth=1)
    left.axhline(0.8, color="grey", linestyle=":", linewidth=1)
    labels = [f"{r['store']}\n{r['gunicorn'].replace(' ', chr(10), 1)}" for r in http]
    left.set_xticks(range(len(http)), labels, fontsize=7)
    left.set_ylabel("keyard throughput / bare falcon throughput")
    left.set_title("HTTP throughput against the baseline (targets 0.9 and 0.8 dashed)")
    left.legend(fontsize=8)

    for store, points in results["curves"].items():
        sizes = [p["instances"] for p in points]
        right.plot(sizes, [p["lookup_us"] for p in points], marker="o", label=f"{store} lookup")
        right.plot(
            sizes, [p["heartbeat_us"] for p in points], marker="x", linestyle="--",
            label=f"{store} heartbeat",
        )  # fmt: skip
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("registered instances")
    right.set_ylabel("microseconds per request, in process")
    right.set_title("Cost of one request as the registry grows")
    right.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle(f"keyard benchmarks, {results['machine']['summary']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def table(results: dict[str, Any]) -> str:
    """The README's summary: every target beside the measured figure."""
    rows = ["| target | measured | |", "|---|---|---|"]
    by_store = {run["store"]: run for run in results["http"] if run.get("default")}
    for store, run in by_store.items():
        target = LOOKUP_RATIO[store]
        for scenario in ("lookup", "choose"):
            figures = run["scenarios"][scenario]
            ratio, keyard = figures["ratio"], figures["keyard"]
            rows.append(
                f"| {store}: {scenario} throughput >= {target:.0%} of bare falcon "
                f"| {ratio:.0%} ({keyard['rps']:,.0f} vs {figures['baseline']['rps']:,.0f} req/s; "
                f"p50 {keyard['p50_us'] / 1000:.1f} ms, p99 {keyard['p99_us'] / 1000:.1f} ms) "
                f"| {_verdict(ratio >= target)} |"
            )
    for store, points in results["curves"].items():
        for figure in ("lookup_us", "heartbeat_us"):
            g = growth(points, figure)
            rows.append(
                f"| {store}: {figure[:-3]} cost at {points[-1]['instances']:,} instances "
                f"<= {GROWTH}x the cost at {points[0]['instances']:,} "
                f"| {g:.2f}x ({points[0][figure]:.0f} -> {points[-1][figure]:.0f} us) "
                f"| {_verdict(g <= GROWTH)} |"
            )
    default = by_store.get("sqlite")
    if default is not None:
        beats = default["scenarios"]["heartbeat"]
        rps = beats["keyard"]["rps"]
        rows.append(
            f"| sqlite (default store): >= {HEARTBEATS_PER_SECOND:,} health checks/s "
            f"| {rps:,.0f}/s ({beats['ratio']:.0%} of bare falcon's "
            f"{beats['baseline']['rps']:,.0f}) "
            f"| {_verdict(rps >= HEARTBEATS_PER_SECOND)} |"
        )
    memory = results["memory"]
    per = memory["bytes_per_instance"]
    labels = ""
    if "tags_per_instance" in memory:  # results of keyard 0.2 have no tags
        labels = (
            f", {memory['tags_per_instance']} tags and "
            f"{memory['metadata_keys_per_instance']} metadata key each"
        )
    rows.append(
        f"| memory store: <= {BYTES_PER_INSTANCE} bytes per instance "
        f"| {per:.0f} bytes ({memory['instances']:,} instances{labels}) "
        f"| {_verdict(per <= BYTES_PER_INSTANCE)} |"
    )
    rows += _settings_table(results)
    machine = results["machine"]
    rows += ["", f"Measured by `{results['command']}` on {machine['date']}: {machine['summary']}."]
    return "\n".join(rows)


def _settings_table(results: dict[str, Any]) -> list[str]:
    """The gunicorn settings compared on the default store, ``keyard serve``'s first."""
    runs = [run for run in results["http"] if run["store"] == "sqlite"]
    if len(runs) < 2:
        return []
    rows = [
        "",
        "| gunicorn settings, sqlite | lookups/s | health checks/s | |",
        "|---|---|---|---|",
    ]
    for run in sorted(runs, key=lambda run: not run.get("default")):
        figures = [run["scenarios"][name] for name in ("lookup", "heartbeat")]
        cells = " | ".join(
            f"{f['keyard']['rps']:,.0f} ({f['ratio']:.0%} of bare falcon)" for f in figures
        )
        rows.append(
            f"| {run['gunicorn']} | {cells} | {'keyard serve' if run.get('default') else ''} |"
        )
    return rows


def update_readme(readme: Path, text: str) -> None:
    """Replace what stands between the bench markers in ``readme`` with ``text``."""
    content = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers")
    readme.write_text(pattern.sub(lambda _: f"{README_START}\n{text}\n{README_END}", content))
