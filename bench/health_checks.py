"""Health checks only, on one store: ``python -m bench.health_checks [--store sqlite]``.

The part of the full suite (``python -m bench``) that issue 14's health-check
target reads, in a few minutes instead of twenty: the in-process cost of one
health check (keyard's WSGI app called directly, from one thread and from
``THREADS`` threads at once), then health checks over HTTP under granian with
``keyard serve``'s settings against the bare falcon baseline (wrk, as
:mod:`bench.http_load` loads every scenario).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import backends, http_load, in_process, population, servers
from bench.__main__ import THREADS
from keyard.app import create_app
from keyard.cli import default_workers
from keyard.helpers.config import from_dict
from keyard.stores import create_store


def in_process_rates(store_name: str, size: int, calls: int, workdir: Path) -> dict[str, float]:
    """Health checks per second through the WSGI app: one thread, then ``THREADS`` at once."""
    with backends.running(store_name, workdir / f"in-process-{store_name}") as options:
        config = from_dict(backends.config(store_name, options), source="bench")
        store = create_store(config.store_type, config.store_options)
        app = create_app(config, store=store)
        try:
            for instance in population.target_instances(time.time()):
                store.put(instance)
            in_process._fill(store, 0, size, 1)
            one = 1 / in_process._per_call(app, in_process._heartbeat_environs(size), calls)

            def worker(seed: int, count: int) -> None:
                rng = random.Random(seed)
                for _ in range(count):
                    form = population.heartbeat_form(rng.randrange(size))
                    status = in_process.call(app, in_process._environ("PUT", body=form))
                    if not status.startswith("200"):
                        raise RuntimeError(f"a health check answered {status}")

            each = calls // THREADS
            best = 0.0
            for _ in range(3):
                threads = [
                    threading.Thread(target=worker, args=(n, each)) for n in range(THREADS)
                ]
                start = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                best = max(best, each * THREADS / (time.perf_counter() - start))
        finally:
            store.close()
    return {"one_thread": one, f"{THREADS}_threads": best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.health_checks", description=__doc__)
    parser.add_argument("--store", choices=backends.STORES, default="sqlite")
    parser.add_argument("--instances", type=int, default=10_000, help="other instances [10000]")
    parser.add_argument("--calls", type=int, default=5_000, help="in-process calls [5000]")
    parser.add_argument("--seconds", type=float, default=3, help="a wrk run [3]")
    parser.add_argument("--repeats", type=int, default=5, help="wrk runs, the median [5]")
    parser.add_argument("--no-http", action="store_true", help="in process only")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="keyard-bench-") as tmp:
        workdir = Path(tmp)
        rates = in_process_rates(args.store, args.instances, args.calls, workdir)
        print(
            f"in process, {args.store}, {args.instances + population.TARGET_INSTANCES:,} "
            f"instances: {rates['one_thread']:,.0f} health checks/s from one thread, "
            f"{rates[f'{THREADS}_threads']:,.0f}/s from {THREADS} threads",
            flush=True,
        )
        if args.no_http:
            return 0
        load = http_load.Load(seconds=args.seconds, repeats=args.repeats)
        server = servers.granian(default_workers(backends.store_type(args.store)), THREADS)
        with http_load.keyard_env(args.store, workdir) as env:
            http_load.against_baseline(
                args.store, server, env, load, args.instances, workdir, scenarios=("heartbeat",)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
