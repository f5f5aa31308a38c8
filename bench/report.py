"""The benchmark's outputs: results JSON, the chart, and the README's tables."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The goals of issue 14, checked against the measured figures (ratios of one run).
#: ``keyard serve`` on the default store against keyard under gunicorn gthread 2w x4t:
SERVE_OVER_GUNICORN = 5.0
#: keyard's lookups over bare falcon's, both under granian (the default server):
OVER_BARE_FALCON = {"simple": 0.90, "sqlite": 0.90, "redis+cache": 0.85, "etcd+cache": 0.85}
#: ``keyard serve``'s lookups over etcd's own v2 GET of the same 10 instances:
SERVE_OVER_ETCD = 1.5
#: ``keyard serve``'s health checks a second on the default store:
HEALTH_CHECKS_PER_SECOND = 12_000
#: Older goals, still checked: growth from the smallest registry to the largest,
#: memory store bytes per instance.
GROWTH = 1.25
#: In process, keyard's answer over the bare falcon handler's answer of the same bytes
#: (10 instances), on these stores: a lookup, and a choice (the weighted strategy).
IN_PROCESS_OVER_BARE = {"lookup": 1.5, "weighted": 1.6}
IN_PROCESS_STORES = ("simple", "sqlite")
BYTES_PER_INSTANCE = 1024
#: Issue 11: 10,000 watchers on ``keyard serve``: all answered within this many ms of
#: one change, each holding at most this many bytes, lookups keeping this share.
WATCHERS_ANSWERED_MS = 2_000
WATCHER_BYTES = 50_000
LOOKUPS_WITH_WATCHERS = 0.80
#: p99 of a watcher's wake-up after a write in another process, ms, per store.
WAKEUP_P99_MS = {"sqlite": 100, "redis": 100, "etcd": 250}
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
DEFAULT_SERVER = "granian"


@dataclass(frozen=True)
class Target:
    """A goal beside its measured figure: ``measured >= goal`` (``<=`` when ``at_most``)."""

    measure: str
    goal: float
    measured: float
    figures: str
    unit: str = "x"
    at_most: bool = False

    @property
    def met(self) -> bool:
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal

    @property
    def short_by(self) -> float:
        """How far the measured figure falls short of the goal, as a share of the goal."""
        return abs(self.measured - self.goal) / self.goal

    def show(self, value: float) -> str:
        return f"{value:,.0f}{self.unit}" if self.unit != "x" else f"{value:.2f}x"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def growth(points: list[dict[str, Any]], figure: str) -> float:
    """Cost at the largest registry over cost at the smallest."""
    return float(points[-1][figure] / points[0][figure])


def _bare_beside(points: list[dict[str, Any]]) -> str:
    """The bare falcon handler's cost at the same two sizes, when it moved (the machine's share)."""
    if "bare_lookup_us" not in points[0]:
        return ""
    first, last = points[0]["bare_lookup_us"], points[-1]["bare_lookup_us"]
    if abs(last / first - 1) < 0.2:
        return ""
    return f"; the bare falcon handler, measured beside it: {first:.1f} -> {last:.1f} us"


def _run(results: dict[str, Any], store: str, server: str) -> dict[str, Any] | None:
    """The run of keyard against bare falcon on ``store`` under ``server``, if measured."""
    for run in results["http"]:
        if run["store"] == store and run["server"] == server:
            return run
    return None


def targets(results: dict[str, Any]) -> Iterator[Target]:
    """Every goal whose figures this run measured, with them."""
    serve = results.get("serve")
    serve_lookups = serve["scenarios"]["lookup"]["keyard"]["rps"] if serve else None
    # Loaded in turn with keyard serve's lookups, run for run (bench.__main__.serve_and_peers).
    beside = serve["scenarios"]["lookup"].get("beside", {}) if serve else {}
    for name, figures in beside.items():
        if name.startswith("keyard, gunicorn") and serve_lookups:
            yield Target(
                f"lookups, `keyard serve` (sqlite) / {name.replace('keyard, ', 'keyard under ')}",
                SERVE_OVER_GUNICORN,
                serve_lookups / figures["rps"],
                f"{serve_lookups:,.0f} vs {figures['rps']:,.0f} req/s, in alternating runs",
            )
    for store, goal in OVER_BARE_FALCON.items():
        run = _run(results, store, DEFAULT_SERVER)
        if run:
            lookup = run["scenarios"]["lookup"]
            keyard = lookup["keyard"]
            yield Target(
                f"lookups, {store} / bare falcon, both under {run['settings']}",
                goal,
                lookup["ratio"],
                f"{keyard['rps']:,.0f} vs {lookup['baseline']['rps']:,.0f} req/s; "
                f"p50 {keyard['p50_us'] / 1000:.2f} ms, p99 {keyard['p99_us'] / 1000:.2f} ms",
            )
    etcd = next((peer for peer in results.get("peers", []) if peer["peer"] == "etcd v2 GET"), None)
    if serve_lookups and etcd:
        yield Target(
            "lookups, `keyard serve` (sqlite) / etcd's own v2 GET of the same 10 instances",
            SERVE_OVER_ETCD,
            serve_lookups / etcd["lookup"]["rps"],
            f"{serve_lookups:,.0f} vs {etcd['lookup']['rps']:,.0f} req/s, in alternating runs",
        )
    if serve:
        beats = serve["scenarios"]["heartbeat"]["keyard"]
        yield Target(
            f"health checks, `keyard serve` (sqlite), {results['machine']['cores']} cores",
            HEALTH_CHECKS_PER_SECOND,
            beats["rps"],
            f"p50 {beats['p50_us'] / 1000:.2f} ms, p99 {beats['p99_us'] / 1000:.2f} ms",
            unit="/s",
        )
    for store, points in results["curves"].items():
        for request, goal in IN_PROCESS_OVER_BARE.items():
            if store not in IN_PROCESS_STORES or f"bare_{request}_us" not in points[0]:
                continue
            # The same 10 instances answered at every size of the registry: the median
            # of the sizes' ratios is the least disturbed by the rest of the machine.
            ratios = sorted(p[f"{request}_us"] / p[f"bare_{request}_us"] for p in points)
            yield Target(
                f"{store}: a {'choice' if request == 'weighted' else request} of 10 instances / "
                f"the bare falcon handler's answer of the same bytes, in process",
                goal,
                statistics.median(ratios),
                f"median of {len(ratios)} registry sizes, {ratios[0]:.2f}x to {ratios[-1]:.2f}x",
                at_most=True,
            )
        for figure in ("lookup_us", "heartbeat_us"):
            yield Target(
                f"{store}: {figure[:-3]} cost at {points[-1]['instances']:,} instances / "
                f"at {points[0]['instances']:,}, in process",
                GROWTH,
                growth(points, figure),
                f"{points[0][figure]:.0f} -> {points[-1][figure]:.0f} us"
                + _bare_beside(points),
                at_most=True,
            )
    yield from _watch_targets(results)
    memory = results["memory"]
    yield Target(
        "memory store: bytes per instance",
        BYTES_PER_INSTANCE,
        memory["bytes_per_instance"],
        f"{memory['instances']:,} instances, {memory['tags_per_instance']} tags and "
        f"{memory['metadata_keys_per_instance']} metadata key each"
        + (
            f"; the change log of the last 3 minutes adds {memory['log_bytes_per_change']:,.0f}"
            " bytes per change"
            if "log_bytes_per_change" in memory
            else ""
        ),
        unit=" bytes",
        at_most=True,
    )


def _watch_targets(results: dict[str, Any]) -> Iterator[Target]:
    """Issue 11's goals: many watchers on ``keyard serve``, and wake-up latency."""
    found = results.get("watchers")
    if found and found.get("answer_max_s") is not None:
        count = f"{found['watchers']:,} watchers"
        yield Target(
            f"{count} on `keyard serve` (sqlite): the last answered after one change",
            WATCHERS_ANSWERED_MS,
            found["answer_max_s"] * 1000,
            f"p50 {found['answer_p50_s'] * 1000:.0f} ms, {found['answered_with_new_index']:,} of "
            f"{found['waiting_at_change']:,} waiting answered with the new index",
            unit=" ms",
            at_most=True,
        )
        yield Target(
            f"{count}: memory per waiting watcher (the server's RSS growth)",
            WATCHER_BYTES,
            found["rss_growth_per_watcher_bytes"],
            f"RSS {found['rss_before_bytes'] / 2**20:.0f} -> "
            f"{found['rss_waiting_bytes'] / 2**20:.0f} MiB",
            unit=" bytes",
            at_most=True,
        )
        yield Target(
            f"{count} waiting: lookups / lookups with none",
            LOOKUPS_WITH_WATCHERS,
            found["lookup_ratio"],
            f"{found['lookups_with_watchers']['rps']:,.0f} vs "
            f"{_without_watchers(found):,.0f} req/s",
        )
    for store, wake in results.get("wakeups", {}).items():
        yield Target(
            f"{store}: p99 of a watcher's wake-up after a write in another process",
            WAKEUP_P99_MS[store],
            wake["p99_ms"],
            f"median {wake['median_ms']:.1f} ms, {wake['rounds']} wake-ups",
            unit=" ms",
            at_most=True,
        )


def draw(results: dict[str, Any], path: Path) -> None:
    """Three panels: lookups a second, keyard against bare falcon, cost as the registry grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, ratios, curves) = plt.subplots(1, 3, figsize=(18, 5.5))
    stores = list(dict.fromkeys(run["store"] for run in results["http"]))
    server_names = list(dict.fromkeys(run["server"] for run in results["http"]))
    width = 0.8 / len(server_names)
    for offset, server in enumerate(server_names):
        runs = [_run(results, store, server) for store in stores]
        xs = [i + (offset - (len(server_names) - 1) / 2) * width for i in range(len(stores))]
        lookups = [run["scenarios"]["lookup"] if run else None for run in runs]
        rps = [lookup["keyard"]["rps"] if lookup else 0 for lookup in lookups]
        rates.bar(xs, rps, width, label=f"keyard under {server}")
        bars = ratios.bar(xs, [lookup["ratio"] if lookup else 0 for lookup in lookups], width,
                          label=server)  # fmt: skip
        ratios.bar_label(bars, fmt="%.2f", fontsize=7)
    serve = results.get("serve")
    others = [("keyard serve\n(sqlite)", serve["scenarios"]["lookup"]["keyard"])] if serve else []
    peers = results.get("peers", [])
    others += [(peer["peer"].replace(" v2", "\nv2"), peer["lookup"]) for peer in peers]
    xs = [len(stores) + i for i in range(len(others))]
    bars = rates.bar(xs, [figures["rps"] for _, figures in others], 0.4, color="grey")
    rates.bar_label(bars, fmt="%.0f", fontsize=7)
    rates.set_xticks([*range(len(stores)), *xs], [*stores, *(label for label, _ in others)],
                     fontsize=7)  # fmt: skip
    rates.set_ylabel("lookups per second (wrk, median run)")
    rates.set_title("Lookups of 10 instances: keyard and the peers")
    rates.legend(fontsize=8)
    for goal in sorted(set(OVER_BARE_FALCON.values())):
        ratios.axhline(goal, color="grey", linestyle="--", linewidth=1)
    ratios.set_xticks(range(len(stores)), stores, fontsize=7)
    ratios.set_ylabel("keyard lookups / bare falcon lookups, same server")
    ratios.set_title("Against a bare falcon app (goals 0.90 and 0.85 dashed)")
    ratios.legend(fontsize=8)

    for store, points in results["curves"].items():
        sizes = [p["instances"] for p in points]
        curves.plot(sizes, [p["lookup_us"] for p in points], marker="o", label=f"{store} lookup")
        curves.plot(
            sizes, [p["heartbeat_us"] for p in points], marker="x", linestyle="--",
            label=f"{store} heartbeat",
        )  # fmt: skip
    curves.set_xscale("log")
    curves.set_yscale("log")
    curves.set_xlabel("registered instances")
    curves.set_ylabel("microseconds per request, in process")
    curves.set_title("Cost of one request as the registry grows")
    curves.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle(f"keyard benchmarks, {results['machine']['summary']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    """The README's summary: every goal beside its measured figure, then the runs."""
    rows = ["| measure | goal | measured | |", "|---|---|---|---|"]
    missed = []
    for target in targets(results):
        sign = "<=" if target.at_most else ">="
        verdict = "met" if target.met else f"**missed** by {target.short_by:.0%}"
        rows.append(
            f"| {target.measure} | {sign} {target.show(target.goal)} "
            f"| {target.show(target.measured)} ({target.figures}) | {verdict} |"
        )
        if not target.met:
            missed.append(
                f"- {target.measure}: {target.show(target.measured)} against a goal of "
                f"{target.show(target.goal)}, {target.short_by:.0%} short."
            )
    if missed:
        rows += ["", "Goals missed (what the profiles show is written below the table):", "",
                 *missed]  # fmt: skip
    rows += ["", *_runs_table(results)]
    rows += _settings_table(results)
    machine = results["machine"]
    rows += ["", f"Measured by `{results['command']}` on {machine['date']}: {machine['summary']}."]
    return "\n".join(rows)


def _cell(figures: dict[str, Any]) -> str:
    """A scenario's keyard throughput, and its share of bare falcon's when measured."""
    rps = f"{figures['keyard']['rps']:,.0f}"
    return f"{rps} ({figures['ratio']:.0%})" if "ratio" in figures else rps


def _row(label: str, scenarios: dict[str, Any], names: tuple[str, ...]) -> str:
    return f"| {label} | " + " | ".join(_cell(scenarios[name]) for name in names) + " |"


def _runs_table(results: dict[str, Any]) -> list[str]:
    """Each store under each server, ``keyard serve``, and the peers, in requests a second."""
    names = ("lookup", "choose", "heartbeat")
    rows = [
        "| requests/s (share of bare falcon's, same server) | lookup | choose | health check |",
        "|---|---|---|---|",
    ]
    for run in results["http"]:
        rows.append(_row(f"{run['store']}, {run['settings']}", run["scenarios"], names))
    serve = results.get("serve")
    if serve:
        rows.append(_row(f"{serve['store']}, `keyard serve`", serve["scenarios"], names))
        for name, figures in serve["scenarios"]["lookup"].get("beside", {}).items():
            if name.startswith("keyard, "):
                rows.append(f"| {serve['store']}, {name}, beside `keyard serve` "
                            f"| {figures['rps']:,.0f} | | |")  # fmt: skip
    for peer in results.get("peers", []):
        rows.append(
            f"| {peer['peer']} (etcd {peer['version']}) | {peer['lookup']['rps']:,.0f} | | |"
        )
    if serve:
        rows += [
            "",
            f"`keyard serve` ran as `{serve['command']}`: its own defaults, the store from "
            "`KEYARD_CONFIG`. keyard and bare falcon ran under each server above alike. The "
            "rows below `keyard serve` were loaded in turn with its lookups, run for run: the "
            "figures of its goals' ratios.",
        ]
    return rows


def _settings_table(results: dict[str, Any]) -> list[str]:
    """The granian settings compared on the default store."""
    runs = results.get("settings")
    if not runs:
        return []
    rows = [
        "",
        f"| {DEFAULT_SERVER} settings, sqlite | lookups/s | health checks/s |",
        "|---|---|---|",
    ]
    grid = _run(results, "sqlite", DEFAULT_SERVER)
    for run in [grid, *runs] if grid else runs:
        rows.append(_row(run["settings"], run["scenarios"], ("lookup", "heartbeat")))
    return rows


def update_readme(readme: Path, text: str) -> None:
    """Replace what stands between the bench markers in ``readme`` with ``text``."""
    content = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers")
    readme.write_text(pattern.sub(lambda _: f"{README_START}\n{text}\n{README_END}", content))


def _without_watchers(found: dict[str, Any]) -> float:
    """The lookups per second without watchers: the mean of the runs before and after
    them (a result file from before the second run has only the first)."""
    runs = [found[k]["rps"] for k in ("lookups_without_watchers", "lookups_after_watchers")
            if k in found]
    return sum(runs) / len(runs)
