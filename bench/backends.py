"""The stores under benchmark, each with its backend running on a free loopback port.

``running(store, workdir)`` starts what the store needs (redis-server, etcd, or
nothing), yields the store's config section, and stops the backend afterwards.
The real servers are the test suite's own (``tests/redis_server.py``,
``tests/etcd_server.py``): one way to start them, for tests and benchmarks alike.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Every store, in the order the results show them; a name with a ``+`` is a store
#: with options that change how it answers (see VARIANTS).
STORES = ("simple", "sqlite", "redis", "redis+cache", "etcd", "etcd+cache")
#: The measured variants of a store: its ``store_type`` and the options they add.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "redis+cache": ("redis", {"cache": True}),
    "etcd+cache": ("etcd", {"cache": True}),
}


def store_type(store: str) -> str:
    """The ``store_type`` a benchmarked store (or variant) runs."""
    return VARIANTS[store][0] if store in VARIANTS else store


@contextmanager
def running(store: str, workdir: Path) -> Iterator[dict[str, Any]]:
    """Start ``store``'s backend in ``workdir``; yield the store's options; stop it."""
    if store in VARIANTS:
        name, extra = VARIANTS[store]
        with running(name, workdir) as options:
            yield {**options, **extra}
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if store == "simple":
        yield {}
    elif store == "sqlite":
        yield {"path": str(workdir / f"registry-{uuid.uuid4().hex}.db")}
    elif store == "redis":
        from tests.redis_server import RedisServer

        redis_server = RedisServer(workdir / "redis")
        try:
            redis_server.start()
            yield {"url": redis_server.url, "prefix": f"bench-{uuid.uuid4().hex}"}
        finally:
            redis_server.stop()
    elif store == "etcd":
        from tests.etcd_server import EtcdServer, started

        program = shutil.which("etcd")
        if program is None:
            raise SystemExit("etcd not found: install Debian's etcd-server (bench/run.sh does)")
        etcd = started(lambda: EtcdServer(program, "bench", workdir))
        try:
            yield {"host": etcd.endpoint, "base_path": f"/bench-{uuid.uuid4().hex}"}
        finally:
            etcd.stop()
    else:
        raise ValueError(f"unknown store {store!r}; benchmarked: {', '.join(STORES)}")


def config(store: str, options: dict[str, Any]) -> dict[str, Any]:
    """keyard's config for ``store``: leases long enough to outlive any benchmark."""
    name = store_type(store)
    return {"store_type": name, name: options, "default_ttl": 3600, "max_ttl": 86400}
