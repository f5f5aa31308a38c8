"""HTTP throughput and latency: keyard against the bare falcon baseline, and ``keyard serve``.

For one store (its backend started by :func:`keyard_env`) and one server with
its settings (:mod:`bench.servers`): start keyard and the baseline under that
server, register the population through keyard's API, then load both with
``wrk`` over keep-alive connections on loopback, alternating baseline and
keyard runs, each bounded in time. ``keyard serve`` itself, with its own
defaults, is loaded the same way, without a baseline.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backends, population
from bench.servers import Server, keyard_serve_command, serving
from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
REPORT_LUA = (HERE / "wrk_report.lua").read_text()

#: What is loaded: a lookup of every location, a choice of one, and a health check.
SCENARIOS = ("lookup", "choose", "heartbeat")


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


def _median(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput, its latencies, and how many runs there were.

    With keep-alive, each of wrk's connections stays with the server's worker
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


@contextmanager
def keyard_env(store: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Start ``store``'s backend; yield the environment that points keyard at it; stop it."""
    with backends.running(store, workdir / store) as options:
        config_path = workdir / f"config-{store}.json"
        config_path.write_text(json.dumps(backends.config(store, options)))
        yield {"KEYARD_CONFIG": str(config_path)}


def load_runs(
    ports: dict[str, int], script: str, load: Load, workdir: Path
) -> dict[str, dict[str, Any]]:
    """``load.repeats`` wrk runs of ``script`` on each port, in turn; the median of each."""
    return load_turns({name: (port, script) for name, port in ports.items()}, load, workdir)


def load_turns(
    targets: Mapping[str, tuple[int, str]], load: Load, workdir: Path
) -> dict[str, dict[str, Any]]:
    """``load.repeats`` rounds of one wrk run on each (port, script), in turn; their medians."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(load.repeats):
        for name, (port, script) in targets.items():
            runs[name].append(wrk(f"http://127.0.0.1:{port}", script, load, workdir))
    return {name: _median(each) for name, each in runs.items()}


def against_baseline(
    store: str,
    server: Server,
    env: dict[str, str],
    load: Load,
    population_size: int,
    workdir: Path,
    scenarios: Sequence[str] = SCENARIOS,
) -> dict[str, Any]:
    """keyard against the baseline, both under ``server``, in each scenario.

    ``env`` points keyard at the store (:func:`keyard_env`). The population is
    registered through this keyard: again, harmlessly, where an earlier one did.
    """
    lua = scripts(population_size)
    with ExitStack() as stack:
        log = workdir / f"{store}-{server.program}"
        keyard_port = free_port()
        argv = server.argv("keyard.wsgi:app", keyard_port)
        stack.enter_context(serving(argv, keyard_port, env, log.with_suffix(".keyard.log")))
        register_population(keyard_port, population_size)
        bodies = answers(keyard_port)
        baseline_port = free_port()  # once keyard listens: never the same port
        argv = server.argv("bench.baseline:app", baseline_port)
        baseline_env = {"BENCH_BODIES": json.dumps(bodies)}
        stack.enter_context(
            serving(argv, baseline_port, baseline_env, log.with_suffix(".baseline.log"))
        )
        results: dict[str, Any] = {}
        for scenario in scenarios:
            ports = {"baseline": baseline_port, "keyard": keyard_port}
            medians = load_runs(ports, lua[scenario], load, workdir)
            ratio = medians["keyard"]["rps"] / medians["baseline"]["rps"]
            results[scenario] = medians | {"ratio": ratio}
            print(
                f"  {store:11} {server.label:24} {scenario:9} keyard "
                f"{medians['keyard']['rps']:8.0f}/s  baseline {medians['baseline']['rps']:8.0f}/s"
                f"  ratio {ratio:.2f}",
                flush=True,
            )
    return {
        "store": store,
        "server": server.program,
        "settings": server.label,
        "population": population_size + population.TARGET_INSTANCES,
        "scenarios": results,
    }


def keyard_serve(
    store: str,
    env: dict[str, str],
    load: Load,
    population_size: int,
    workdir: Path,
    beside: Mapping[str, tuple[int, str]] | None = None,
    scenarios: Sequence[str] = SCENARIOS,
) -> dict[str, Any]:
    """``keyard serve`` as a user runs it (its defaults, a bind), in each scenario.

    ``beside`` (name: running server's port and wrk script) is loaded in turn
    with ``keyard serve``'s lookups, run for run, so that their ratios are of one
    moment of the machine (its lookups measured apart moved 45% between two runs).
    """
    lua = scripts(population_size)
    port = free_port()
    argv = keyard_serve_command(port)
    others = dict(beside or {})
    with serving(argv, port, env, workdir / f"{store}-keyard-serve.log"):
        register_population(port, population_size)
        results = {}
        for scenario in scenarios:
            targets = {"keyard": (port, lua[scenario])}
            medians = load_turns(targets | (others if scenario == "lookup" else {}), load, workdir)
            results[scenario] = {"keyard": medians.pop("keyard")}
            if medians:
                results[scenario]["beside"] = medians
            print(
                f"  {store:11} {'keyard serve':24} {scenario:9} keyard "
                f"{results[scenario]['keyard']['rps']:8.0f}/s"
                + "".join(f"  {name} {found['rps']:8.0f}/s" for name, found in medians.items()),
                flush=True,
            )
    return {
        "store": store,
        "command": " ".join(["keyard", *argv[1:]]),
        "population": population_size + population.TARGET_INSTANCES,
        "scenarios": results,
    }
