"""HTTP throughput and latency: keyard under gunicorn against the bare falcon baseline.

For one store and one set of gunicorn settings: start the store's backend,
keyard and the baseline (same settings), register the population through
keyard's API, then load both with ``wrk`` over keep-alive connections on
loopback, alternating baseline and keyard runs, each bounded in time.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backends, population
from keyard.server import WORKER_CLASS
from tests import gunicorn_server
from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
REPORT_LUA = (HERE / "wrk_report.lua").read_text()

#: What is loaded: a lookup of every location, a choice of one, and a health check.
SCENARIOS = ("lookup", "choose", "heartbeat")


@dataclass(frozen=True)
class Gunicorn:
    """gunicorn settings, the same for keyard and its baseline."""

    worker_class: str = "gthread"
    workers: int = 1
    threads: int = 4

    @property
    def label(self) -> str:
        """``gthread 2w x4t``: the worker class, workers, and threads per worker."""
        threads = f" x{self.threads}t" if self.worker_class == "gthread" else ""
        return f"{self.worker_class} {self.workers}w{threads}"

    def args(self) -> list[str]:
        # gthread means keyard's own gthread worker, the one ``keyard serve`` runs
        # (gunicorn's, with its own error pages in JSON), for keyard and baseline alike.
        worker_class = WORKER_CLASS if self.worker_class == "gthread" else self.worker_class
        args = ["--worker-class", worker_class, "--workers", str(self.workers)]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads)]
        # --reuse-port: each worker listens on its own socket and the kernel spreads
        # wrk's connections over them. On one shared socket the first worker awake
        # took them all in about one run in three (the bare baseline: 2,600 req/s
        # instead of 7,000), and the luck of each run decided its ratio.
        return args + ["--backlog", "2048", "--log-level", "warning", "--reuse-port"]


@dataclass(frozen=True)
class Load:
    """How hard and how long ``wrk`` pushes: bounded in time, on loopback only."""

    seconds: float = 3.0
    connections: int = 16
    threads: int = 1
    repeats: int = 5


def wrk(url: str, script: str, load: Load, workdir: Path) -> dict[str, Any]:
    """One ``wrk`` run against ``url`` with the Lua ``script``; its summary as a dict."""
    program = shutil.which("wrk")
    if program is None:
        raise SystemExit("wrk not found: install Debian's wrk (bench/run.sh does)")
    script_path = workdir / "wrk-script.lua"
    script_path.write_text(script + "\n" + REPORT_LUA)
    seconds = max(1, round(load.seconds))
    command = [
        program, f"-t{load.threads}", f"-c{load.connections}", f"-d{seconds}s",
        "--timeout", "5s", "-s", str(script_path), url,
    ]  # fmt: skip
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    found = re.search(r"^BENCH_JSON (.*)$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    result: dict[str, Any] = json.loads(found.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    failed = sum(result[k] for k in ("non_2xx", "connect_errors", "read_errors", "timeouts"))
    if failed:
        raise RuntimeError(f"{failed} of {result['requests']} requests failed: {result}")
    return result


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def scripts(population_size: int) -> dict[str, str]:
    """The Lua request script of each scenario."""
    path = f"/keyard?{population.lookup_query()}"
    bodies = ",\n".join(_lua_string(population.heartbeat_form(n)) for n in range(population_size))
    return {
        "lookup": f"wrk.path = {_lua_string(path)}",
        "choose": f"wrk.path = {_lua_string(path + '&load_balancer_strategy=random')}",
        "heartbeat": (
            f"local bodies = {{\n{bodies}\n}}\n"
            "local n = math.random(#bodies)\n"
            'local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}\n'
            "request = function()\n"
            "  n = n % #bodies + 1\n"
            '  return wrk.format("PUT", "/keyard", headers, bodies[n])\n'
            "end"
        ),
    }


def register_population(port: int, size: int) -> None:
    """POST the target's instances and ``size`` other ones over one keep-alive connection.

    With their tags, metadata and weights, as :mod:`bench.population` describes them.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    registrations = population.targets() + [population.other(n) for n in range(size)]
    try:
        for registration in registrations:
            form = population.registration_form(registration)
            connection.request("POST", "/keyard", form, headers)
            response = connection.getresponse()
            body = response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"registering {form} gave {response.status}: {body!r}")
    finally:
        connection.close()


def answers(port: int) -> dict[str, str]:
    """keyard's answer body in each scenario: what the baseline answers, byte for byte."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/keyard?{population.lookup_query()}"
    requests = {
        "get": ("GET", path, None),
        "choose": ("GET", path + "&load_balancer_strategy=random", None),
        "put": ("PUT", "/keyard", population.heartbeat_form(0)),
    }
    bodies = {}
    try:
        for name, (method, target, body) in requests.items():
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
            connection.request(method, target, body, headers)
            response = connection.getresponse()
            bodies[name] = response.read().decode()
            if response.status != 200:
                raise RuntimeError(f"{method} {target} gave {response.status}: {bodies[name]}")
    finally:
        connection.close()
    return bodies


@contextmanager
def _serving(app_spec: str, env: dict[str, str], settings: Gunicorn) -> Iterator[int]:
    port = free_port()
    with gunicorn_server.start(app_spec, port, env, settings.args(), timeout=60):
        yield port


def _median(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput, its latencies, and how many runs there were.

    With keep-alive, each of wrk's connections stays with the gunicorn worker
    that accepted it, so how they split between workers still moves a run's
    throughput (the bare baseline: 5,300 to 7,600 req/s with two workers). The
    median run is the typical one: neither the luckiest split nor the worst.
    """
    ordered = sorted(runs, key=lambda run: run["rps"])
    median = ordered[(len(ordered) - 1) // 2]
    return {key: median[key] for key in ("rps", "p50_us", "p90_us", "p99_us")} | {
        "runs": len(runs),
        "requests": sum(run["requests"] for run in runs),
        "rps_of_each_run": [round(run["rps"]) for run in runs],
    }


def measure(
    store: str,
    settings: Gunicorn,
    load: Load,
    population_size: int,
    workdir: Path,
    scenarios: Sequence[str] = SCENARIOS,
) -> dict[str, Any]:
    """keyard against the baseline in each scenario, for one store and gunicorn settings."""
    lua = scripts(population_size)
    with ExitStack() as stack:
        options = stack.enter_context(backends.running(store, workdir / store))
        config_path = workdir / f"config-{store}.json"
        config_path.write_text(json.dumps(backends.config(store, options)))
        keyard_port = stack.enter_context(
            _serving("keyard.wsgi:app", {"KEYARD_CONFIG": str(config_path)}, settings)
        )
        register_population(keyard_port, population_size)
        bodies = answers(keyard_port)
        baseline_port = stack.enter_context(
            _serving("bench.baseline:app", {"BENCH_BODIES": json.dumps(bodies)}, settings)
        )
        results: dict[str, Any] = {}
        for scenario in scenarios:
            runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "keyard": []}
            for _ in range(load.repeats):
                for name, port in (("baseline", baseline_port), ("keyard", keyard_port)):
                    url = f"http://127.0.0.1:{port}"
                    runs[name].append(wrk(url, lua[scenario], load, workdir))
            baseline, keyard = _median(runs["baseline"]), _median(runs["keyard"])
            results[scenario] = {
                "baseline": baseline,
                "keyard": keyard,
                "ratio": keyard["rps"] / baseline["rps"],
            }
            print(
                f"  {store:10} {settings.label:20} {scenario:9} keyard {keyard['rps']:8.0f}/s"
                f"  baseline {baseline['rps']:8.0f}/s  ratio {results[scenario]['ratio']:.2f}",
                flush=True,
            )
    return {
        "store": store,
        "gunicorn": settings.label,
        "population": population_size + population.TARGET_INSTANCES,
        "scenarios": results,
    }
