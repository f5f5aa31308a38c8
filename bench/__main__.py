"""Run keyard's benchmarks: ``python -m bench [--quick] [--out DIR] [--readme FILE]``.

``bash bench/run.sh`` sets up what they need first (wrk, etcd, redis-server, a venv).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    backends,
    http_load,
    in_process,
    peers,
    population,
    report,
    servers,
    wakeup,
    watchers,
)
from keyard.cli import default_workers
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """How much each part measures: the full run, or a quick one that checks the harness.

    ``candidates``: how many of :data:`CANDIDATES` (granian settings) are compared.
    """

    local_sizes: tuple[int, ...]
    network_sizes: tuple[int, ...]
    local_calls: int
    network_calls: int
    load: http_load.Load
    http_population: int
    memory_instances: int
    candidates: int
    #: watchers waiting at once on ``keyard serve``; wake-ups measured per store
    watchers: int
    wakeups: int


FULL = Plan(
    local_sizes=(1_000, 10_000, 100_000, 1_000_000),
    network_sizes=(1_000, 10_000, 100_000),
    local_calls=5_000,
    network_calls=3_000,
    load=http_load.Load(seconds=3, repeats=5),
    http_population=10_000,
    memory_instances=100_000,
    candidates=4,
    watchers=10_000,
    wakeups=100,
)
QUICK = Plan(
    local_sizes=(100, 1_000),
    network_sizes=(100, 1_000),
    local_calls=100,
    network_calls=50,
    load=http_load.Load(seconds=1, repeats=1),
    http_population=100,
    memory_instances=1_000,
    candidates=1,
    watchers=50,
    wakeups=5,
)


#: The stores whose wake-up latency is measured (the cache options wake as their store).
WAKEUP_STORES = ("sqlite", "redis", "etcd")
#: The store ``keyard serve`` uses unless told otherwise.
DEFAULT_STORE = "sqlite"
#: Threads per worker: gunicorn's gthread threads, granian's blocking threads.
THREADS = 4


def servers_for(store: str) -> list[servers.Server]:
    """The servers keyard and its baseline are measured under, for ``store``.

    Both with ``keyard serve``'s worker count for the store and ``THREADS``:
    granian (the default server) and gunicorn's gthread (``--server gunicorn``).
    """
    workers = default_workers(backends.store_type(store))
    return [servers.granian(workers, THREADS), servers.gunicorn(workers, THREADS)]


#: granian settings compared on the default store, to choose ``keyard serve``'s defaults.
CANDIDATES = (
    servers.granian(1, 4), servers.granian(2, 1), servers.granian(2, 2), servers.granian(2, 8)
)


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {name: metadata.version(name) for name in ("falcon", "granian", "gunicorn")}
    cores = os.cpu_count()
    return {
        "cores": cores,
        "cpu": model,
        "python": platform.python_version(),
        **versions,
        "date": datetime.date.today().isoformat(),
        "summary": f"{cores} cores ({model}), Python {platform.python_version()}, "
        f"falcon {versions['falcon']}, granian {versions['granian']}, "
        f"gunicorn {versions['gunicorn']}",
    }


def serve_and_peers(
    store: str, env: dict[str, str], load: http_load.Load, size: int, workdir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``keyard serve``, its lookups loaded in turn with keyard under gunicorn and the peers.

    The goals' ratios (``keyard serve`` over gunicorn, over etcd's own GET) are
    then of figures measured run for run, as keyard's against bare falcon's are.
    """
    (gunicorn,) = [server for server in servers_for(store) if server.program == "gunicorn"]
    port = free_port()
    lookup = http_load.scripts(size)["lookup"]
    with ExitStack() as stack:
        argv = gunicorn.argv("keyard.wsgi:app", port)
        stack.enter_context(servers.serving(argv, port, env, workdir / f"{store}-beside.log"))
        etcd = stack.enter_context(peers.etcd_v2(workdir))
        beside = {f"keyard, {gunicorn.label}": (port, lookup), etcd.name: (etcd.port, etcd.script)}
        serve = http_load.keyard_serve(store, env, load, size, workdir, beside=beside)
    found = serve["scenarios"]["lookup"]["beside"]
    peer = {"peer": etcd.name, "version": etcd.version, "request": etcd.request}
    return serve, [peer | {"lookup": found[etcd.name]}]


def run(plan: Plan, stores: list[str], compare: bool, workdir: Path) -> dict[str, Any]:
    command = " ".join(["bash bench/run.sh", *sys.argv[1:]])
    results: dict[str, Any] = {"machine": machine(), "command": command}
    started = time.monotonic()

    print(
        f"memory per instance ({plan.memory_instances:,} instances in the memory store, "
        f"{population.TAGS_PER_INSTANCE} tags and {population.METADATA_KEYS_PER_INSTANCE} "
        "metadata key each)"
    )
    per = in_process.memory_per_instance(plan.memory_instances)
    logged = in_process.memory_per_instance(plan.memory_instances, keep_log=True) - per
    print(f"  {per:.0f} bytes per instance, and {logged:.0f} per change in the change log")
    results["memory"] = {
        "instances": plan.memory_instances,
        "bytes_per_instance": per,
        "log_bytes_per_change": logged,
        "tags_per_instance": population.TAGS_PER_INSTANCE,
        "metadata_keys_per_instance": population.METADATA_KEYS_PER_INSTANCE,
    }

    print("in-process cost of one request as the registry grows")
    results["curves"] = {}
    for store in stores:
        local = store in ("simple", "sqlite")
        sizes = plan.local_sizes if local else plan.network_sizes
        calls = plan.local_calls if local else plan.network_calls
        results["curves"][store] = in_process.curve(store, sizes, calls, workdir)

    size = plan.http_population
    print(
        f"HTTP load with wrk ({plan.load.connections} connections, {plan.load.seconds:g} s "
        f"a run, median of {plan.load.repeats}; {plan.http_population:,} other instances)"
    )
    results["http"] = []
    for store in stores:
        with http_load.keyard_env(store, workdir) as env:
            for server in servers_for(store):
                results["http"].append(
                    http_load.against_baseline(store, server, env, plan.load, size, workdir)
                )
            if store == DEFAULT_STORE:
                results["serve"], results["peers"] = serve_and_peers(
                    store, env, plan.load, size, workdir
                )
            if compare and store == DEFAULT_STORE:
                print(f"granian settings on the default store ({DEFAULT_STORE})")
                results["settings"] = [
                    http_load.against_baseline(
                        store, server, env, plan.load, size, workdir,
                        scenarios=("lookup", "heartbeat"),
                    )
                    for server in CANDIDATES[: plan.candidates]
                ]  # fmt: skip
    print(f"{plan.watchers:,} watchers waiting on keyard serve (sqlite), then one change")
    results["watchers"] = watchers.main([
        "--watchers", str(plan.watchers),
        "--seconds", f"{plan.load.seconds:g}", "--repeats", str(plan.load.repeats),
    ])  # fmt: skip
    print("wake-up latency: a write in one process, a waiter in another")
    results["wakeups"] = {}
    for store in (s for s in stores if s in WAKEUP_STORES):
        with backends.running(store, workdir / f"wakeup-{store}") as options:
            found = sorted(wakeup.measure(store, options, plan.wakeups))
        results["wakeups"][store] = {
            "rounds": len(found),
            "median_ms": statistics.median(found),
            "p99_ms": found[min(len(found) - 1, int(len(found) * 0.99))],
            "max_ms": found[-1],
        }
        print(f"  {store}: median {results['wakeups'][store]['median_ms']:.1f} ms, "
              f"p99 {results['wakeups'][store]['p99_ms']:.1f} ms", flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["population"] = {
        "target": f"{population.TARGET} version {population.TARGET_VERSION}",
        "target_instances": population.TARGET_INSTANCES,
        "others_per_service": population.OTHERS_PER_SERVICE,
        "tags_per_instance": population.TAGS_PER_INSTANCE,
        "metadata_keys_per_instance": population.METADATA_KEYS_PER_INSTANCE,
        "tag_filter": population.TAG_FILTER,
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 1 s runs: checks the harness, measures little",
    )
    parser.add_argument(
        "--stores", nargs="+", choices=backends.STORES, default=list(backends.STORES)
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the comparison of granian settings"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "docs" / "bench",
        help="where results.json and chart.png go [docs/bench]",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=REPO_ROOT / "README.md",
        help="the file whose bench table is refreshed [README.md]",
    )
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = parser.parse_args(argv)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="keyard-bench-") as tmp:
        results = run(QUICK if args.quick else FULL, args.stores, not args.no_compare, Path(tmp))
    report.write_json(results, args.out / "results.json")
    report.draw(results, args.out / "chart.png")
    summary = report.table(results)
    if not args.no_readme:
        report.update_readme(args.readme, summary)
    print(
        f"\n{summary}\n\nwrote {args.out / 'results.json'} and {args.out / 'chart.png'} "
        f"in {results['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
