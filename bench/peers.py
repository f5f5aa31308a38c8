"""The peers: other registries answering the same lookup of the same 10 instances.

etcd's own v2 API: the looked-up service's instances, one key each under one
directory (the records as JSON, as keyard's etcd store keeps them), read back
by ``GET /v2/keys/<dir>?recursive=true``. :func:`etcd_v2` keeps it running
while ``wrk`` loads it in turn with ``keyard serve`` (``http_load.keyard_serve``),
so that their ratio is of one moment of the machine.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import backends, population


@dataclass(frozen=True)
class Peer:
    """A running peer: its name in the results, its version, the loaded request."""

    name: str
    version: str
    request: str
    port: int
    script: str  # wrk's Lua request script


def _etcd_version() -> str:
    output = subprocess.run(
        ["etcd", "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return output.splitlines()[0].removeprefix("etcd Version: ")


@contextmanager
def etcd_v2(workdir: Path) -> Iterator[Peer]:
    """An etcd of its own holding the target's instances, one key each, until the block ends."""
    with backends.running("etcd", workdir / "etcd-peer") as options:
        url = f"http://{options['host']}"
        directory = f"/v2/keys{options['base_path']}/{population.TARGET}"
        for n, record in enumerate(population.target_instances(time.time())):
            body = urllib.parse.urlencode({"value": json.dumps(record._asdict())}).encode()
            request = urllib.request.Request(f"{url}{directory}/{n}", body, method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pass
        path = f"{directory}?recursive=true"
        with urllib.request.urlopen(url + path, timeout=10) as response:
            nodes = json.load(response)["node"]["nodes"]
        if len(nodes) != population.TARGET_INSTANCES:
            raise RuntimeError(f"etcd holds {len(nodes)} of the target's instances: {nodes}")
        yield Peer(
            name="etcd v2 GET",
            version=_etcd_version(),
            request=f"GET {path}",
            port=int(options["host"].rsplit(":", 1)[1]),
            script=f"wrk.path = {json.dumps(path)}",
        )
