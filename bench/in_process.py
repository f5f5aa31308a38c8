"""The in-process cost of one lookup and one health check as the registry grows.

keyard's WSGI app is called directly (no network, no server), with a store
filled to 1k, 10k, 100k, ... instances, so the curve shows what the registry
itself costs per request at each size: a lookup of every location, a health
check, and two lookups the 0.2 API did not have (a choice by the weighted
strategy, a lookup filtered by a tag). Memory per instance is measured on the
memory store with tracemalloc, each instance with its tags and metadata.
"""

from __future__ import annotations

import gc
import io
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import backends, baseline, population
from keyard.app import create_app
from keyard.helpers.config import from_dict
from keyard.stores import create_store
from keyard.stores.base import Store
from keyard.stores.memory import MemoryStore

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def _environ(method: str, query: str = "", body: str = "") -> dict[str, Any]:
    data = body.encode()
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/keyard",
        "QUERY_STRING": query,
        "CONTENT_TYPE": "application/x-www-form-urlencoded" if data else "",
        "CONTENT_LENGTH": str(len(data)) if data else "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(data),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app: WsgiApp, environ: dict[str, Any]) -> str:
    """Call the WSGI app once; its status line (the body is read and dropped)."""
    return answer(app, environ)[0]


def answer(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, bytes]:
    """Call the WSGI app once; its status line and body."""
    status: list[str] = []
    body = app(environ, lambda s, headers, exc_info=None: status.append(s))
    return status[0], b"".join(body)


def bare_app_for(app: WsgiApp) -> WsgiApp:
    """The bare falcon app (bench.baseline) answering keyard's lookup and choice bytes."""
    _, lookup = answer(app, _lookup_environ())
    _, choice = answer(app, _weighted_environ())
    return baseline.make_app({"get": lookup, "choose": choice, "put": b"{}"})


def _per_call(app: WsgiApp, make_environ: Callable[[], dict[str, Any]], calls: int) -> float:
    """Seconds per call: the fastest of five batches of ``calls // 5``, after one untimed.

    The fastest batch is the one least disturbed by the rest of the machine
    (as ``timeit`` advises); slower ones measure the noise, not keyard. The
    untimed batch warms what the first calls would pay for alone (the first
    registry size measured 2x slower without it).
    """
    batch = max(1, calls // 5)
    first = call(app, make_environ())
    if not first.startswith("200"):
        raise RuntimeError(f"the benchmarked request answered {first}")
    for environ in [make_environ() for _ in range(batch)]:
        call(app, environ)
    timings = []
    for _ in range(5):
        environs = [make_environ() for _ in range(batch)]
        start = time.perf_counter()
        for environ in environs:
            call(app, environ)
        timings.append((time.perf_counter() - start) / batch)
    return min(timings)


def _lookup_environ() -> dict[str, Any]:
    return _environ("GET", population.lookup_query())


def _weighted_environ() -> dict[str, Any]:
    return _environ("GET", population.weighted_query())


def _tag_lookup_environ() -> dict[str, Any]:
    return _environ("GET", population.tag_lookup_query())


def _heartbeat_environs(size: int) -> Callable[[], dict[str, Any]]:
    """Health checks of instances picked at random among the first ``size``."""
    rng = random.Random(size)

    def make() -> dict[str, Any]:
        return _environ("PUT", body=population.heartbeat_form(rng.randrange(size)))

    return make


def _fill(store: Store, start: int, stop: int, threads: int) -> float:
    """Register other instances ``start`` to ``stop - 1``; seconds per registration."""
    began = time.perf_counter()
    chunk = 10_000
    for first in range(start, stop, chunk):
        batch = population.instances(first, min(stop, first + chunk), time.time())
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(store.put, batch))
        else:
            for instance in batch:
                store.put(instance)
    return (time.perf_counter() - began) / max(1, stop - start)


def curve(store_name: str, sizes: Sequence[int], calls: int, workdir: Path) -> list[dict[str, Any]]:
    """Cost of each request (microseconds) at each registry size, smallest first.

    ``lookup_us`` and ``heartbeat_us`` measure what keyard 0.2's bench measured;
    ``bare_lookup_us`` and ``bare_weighted_us`` the bare falcon app answering the
    same bytes (issue 14's in-process baseline); ``weighted_us`` (a choice) and
    ``tag_lookup_us`` the new lookups.
    """
    points = []
    # Network stores fill faster with several connections at once; local ones need one.
    threads = 8 if backends.store_type(store_name) in ("redis", "etcd") else 1
    with backends.running(store_name, workdir / f"curve-{store_name}") as options:
        config = from_dict(backends.config(store_name, options), source="bench")
        store = create_store(config.store_type, config.store_options)
        app = create_app(config, store=store)
        try:
            for instance in population.target_instances(time.time()):
                store.put(instance)
            filled = 0
            for size in sorted(sizes):
                register_us = _fill(store, filled, size, threads) * 1e6
                filled = size
                gc.collect()
                lookup = _per_call(app, _lookup_environ, calls)
                bare = bare_app_for(app)
                bare_lookup = _per_call(bare, _lookup_environ, calls)
                bare_weighted = _per_call(bare, _weighted_environ, calls)
                heartbeat = _per_call(app, _heartbeat_environs(size), calls)
                weighted = _per_call(app, _weighted_environ, calls)
                tag_lookup = _per_call(app, _tag_lookup_environ, calls)
                point = {
                    "instances": size + population.TARGET_INSTANCES,
                    "lookup_us": lookup * 1e6,
                    "bare_lookup_us": bare_lookup * 1e6,
                    "heartbeat_us": heartbeat * 1e6,
                    "weighted_us": weighted * 1e6,
                    "bare_weighted_us": bare_weighted * 1e6,
                    "tag_lookup_us": tag_lookup * 1e6,
                    "register_us": register_us,
                }
                print(
                    f"  {store_name:10} {point['instances']:>9,} instances: lookup "
                    f"{point['lookup_us']:7.1f} us (bare falcon {point['bare_lookup_us']:.1f})"
                    f"  heartbeat {point['heartbeat_us']:7.1f} us"
                    f"  weighted {point['weighted_us']:7.1f} us"
                    f"  by tag {point['tag_lookup_us']:7.1f} us",
                    flush=True,
                )
                points.append(point)
        finally:
            store.close()
    return points


def memory_per_instance(count: int, keep_log: bool = False) -> float:
    """Bytes the memory store holds per registered instance, its strings included.

    Each instance with the population's tags and metadata key, in records as
    the registry makes them (fresh strings each, as requests make). The store's
    change log keeps the changes of the last 3 minutes, so that right after
    ``count`` registrations it holds one entry per instance: ``keep_log=False``
    measures a registry in its steady state (the log trimmed at each change),
    ``keep_log=True`` the registrations' first 3 minutes.
    """
    store = MemoryStore()
    if not keep_log:
        store.log_seconds = 0.0
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for first in range(0, count, 10_000):
            for instance in population.instances(first, min(count, first + 10_000), time.time()):
                store.put(instance)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if len(store) != count:
        raise RuntimeError(f"the memory store holds {len(store)} instances, not {count}")
    return held / count
