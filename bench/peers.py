"""The peers: other registries answering the same lookup of the same 10 instances.

etcd's own v2 API: the looked-up service's instances, one key each under one
directory (the records as JSON, as keyard's etcd store keeps them), read back
by ``GET /v2/keys/<dir>?recursive=true``, loaded by ``wrk`` as keyard is.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import backends, http_load, population


def _etcd_version() -> str:
    output = subprocess.run(
        ["etcd", "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return output.splitlines()[0].removeprefix("etcd Version: ")


def etcd_v2_get(load: http_load.Load, workdir: Path) -> dict[str, Any]:
    """etcd's v2 GET of a directory of the target's instances, on its own etcd."""
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
        port = int(options["host"].rsplit(":", 1)[1])
        script = f"wrk.path = {json.dumps(path)}"
        medians = http_load.load_runs({"etcd": port}, script, load, workdir)
    figures = medians["etcd"]
    print(f"  {'etcd v2 GET':36} lookup    etcd   {figures['rps']:8.0f}/s", flush=True)
    return {
        "peer": "etcd v2 GET",
        "version": _etcd_version(),
        "request": f"GET {path}",
        "lookup": figures,
    }
