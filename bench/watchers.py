"""Many watchers waiting at once on one keyard: ``python -m bench.watchers --watchers 10000``.

Starts ``keyard serve`` with its defaults on the default store (sqlite, in a temporary
directory) on a loopback port, or any other server given by ``--command``, registers
the benchmark's population (:mod:`bench.population`), and measures:

1. lookup throughput with ``wrk`` (as :mod:`bench.http_load` loads it), no watcher
   (taken again after step 5, once every watcher has closed: the ratio of step 4
   compares with the mean of both, so that the machine's drift between runs cancels);
2. ``--watchers`` keep-alive connections, each with one blocking query
   ``GET /keyard/services/payments?index=N&wait=60`` at the current index, opened
   by one asyncio client (an answer before the change is counted as ``early``);
3. the growth of the server's memory (RSS of all its processes) per waiting watcher;
4. lookup throughput again while they wait;
5. one registration, and the time from its sending to each watcher's whole answer
   (max, p99, p50), with how many were answered with a new index.

Prints a line per step and the results as one ``BENCH_JSON {...}`` line (also written
to ``--out``). Bounded: every step has a deadline, and the watchers' ``wait`` ends them.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench import http_load, population
from bench.servers import keyard_serve_command, serving
from tests.conftest import free_port

#: Seconds a watcher asks to wait: longer than the whole run before the change.
WAIT = 60
#: Connections opened at once while the watchers connect.
CONNECTING = 200
#: Other instances registered beside the watched service's.
POPULATION = 100


def raise_open_files(needed: int) -> int:
    """Raise this process's limit of open files (inherited by the server) to ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def group_processes(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (the server started in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def rss_bytes(pgid: int) -> int:
    """The resident memory of every process of the group, in bytes."""
    total = 0
    for pid in group_processes(pgid):
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pgid: int) -> float:
    """User and system CPU seconds used so far by the group's processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in group_processes(pgid):
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def settle(pgid: int, timeout: float = 60.0, idle: float = 0.1) -> float:
    """Wait until the server uses under ``idle`` of a core over half a second (at most
    ``timeout`` s); the seconds waited."""
    started = time.monotonic()
    before = cpu_seconds(pgid)
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        now = cpu_seconds(pgid)
        if now - before < idle * 0.5:
            break
        before = now
    return time.monotonic() - started


def current_index(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/keyard/services/{population.TARGET}")
        response = connection.getresponse()
        response.read()
        return int(response.headers["X-Keyard-Index"])
    finally:
        connection.close()


def register_one(port: int) -> None:
    """Register one more instance of the watched service: the change."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    form = population.registration_form(
        population.targets()[0]._replace(location="http://10.9.9.9:9000")
    )
    try:
        connection.request(
            "POST", "/keyard", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        response = connection.getresponse()
        response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"the registration gave {response.status}")
    finally:
        connection.close()


class Watcher(asyncio.Protocol):
    """One connection with one blocking query; notes when its whole answer came."""

    def __init__(self, request: bytes, connected: asyncio.Future[None]) -> None:
        self.request = request
        self.connected = connected
        self.buffer = bytearray()
        self.length: int | None = None
        self.head_size = 0
        self.answered_at: float | None = None
        self.status = 0
        self.index: int | None = None
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.answered_at is not None:
            return
        self.buffer += data
        if self.length is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split()[1])
            self.length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self.length = int(value)
                elif name.strip().lower() == "x-keyard-index":
                    self.index = int(value)
            self.head_size = end + 4
        if len(self.buffer) >= self.head_size + self.length:
            self.answered_at = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered_at is None:
            self.lost = True
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))


async def open_watchers(port: int, count: int, index: int) -> list[Watcher]:
    """``count`` connections, each sending one blocking query at ``index``."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /keyard/services/{population.TARGET}?index={index}&wait={WAIT} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(CONNECTING)
    watchers: list[Watcher] = []

    async def one() -> None:
        async with gate:
            connected: asyncio.Future[None] = loop.create_future()
            watcher = Watcher(request, connected)
            watchers.append(watcher)
            await loop.create_connection(lambda: watcher, "127.0.0.1", port)
            await asyncio.wait_for(connected, 30)

    await asyncio.gather(*(one() for _ in range(count)))
    return watchers


async def until_answered(watchers: list[Watcher], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(w.answered_at is not None or w.lost for w in watchers):
            return
        await asyncio.sleep(0.01)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def lookups(port: int, load: http_load.Load, workdir: Path) -> dict[str, Any]:
    script = http_load.scripts(POPULATION)["lookup"]
    return http_load.load_runs({"keyard": port}, script, load, workdir)["keyard"]


async def measure(
    port: int, pgid: int, count: int, load: http_load.Load, workdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {"watchers": count}
    loop = asyncio.get_running_loop()
    quiet = await loop.run_in_executor(None, lookups, port, load, workdir)
    results["lookups_without_watchers"] = quiet
    print(f"  lookups, no watcher: {quiet['rps']:.0f}/s (p99 {quiet['p99_us'] / 1000:.1f} ms)",
          flush=True)
    await loop.run_in_executor(None, settle, pgid)
    rss_before = rss_bytes(pgid)
    index = current_index(port)
    started = time.monotonic()
    watchers = await open_watchers(port, count, index)
    connected = time.monotonic() - started
    waited = await loop.run_in_executor(None, settle, pgid)
    rss_waiting = rss_bytes(pgid)
    early = sum(1 for w in watchers if w.answered_at is not None or w.lost)
    growth = (rss_waiting - rss_before) / count
    results.update(
        connect_seconds=round(connected, 2),
        settle_seconds=round(waited, 2),
        rss_before_bytes=rss_before,
        rss_waiting_bytes=rss_waiting,
        rss_growth_per_watcher_bytes=round(growth),
        early=early,
    )
    print(f"  {count} watchers connected in {connected:.1f} s, settled in {waited:.1f} s; "
          f"RSS {rss_before / 2**20:.0f} -> {rss_waiting / 2**20:.0f} MiB "
          f"({growth / 1024:.1f} KiB per watcher); answered early: {early}", flush=True)
    busy = await loop.run_in_executor(None, lookups, port, load, workdir)
    results["lookups_with_watchers"] = busy
    print(f"  lookups, {count} watchers waiting: {busy['rps']:.0f}/s "
          f"(p99 {busy['p99_us'] / 1000:.1f} ms)", flush=True)
    still = sum(1 for w in watchers if w.answered_at is None and not w.lost)
    changed_at = time.monotonic()
    await loop.run_in_executor(None, register_one, port)
    await until_answered(watchers, WAIT)
    latencies = [w.answered_at - changed_at for w in watchers if w.answered_at is not None
                 and w.answered_at >= changed_at]
    new = sum(1 for w in watchers if w.status == 200 and w.index is not None and w.index > index)
    results.update(
        waiting_at_change=still,
        answered_after_change=len(latencies),
        answered_with_new_index=new,
        lost=sum(1 for w in watchers if w.lost),
        answer_max_s=round(max(latencies), 3) if latencies else None,
        answer_p99_s=round(percentile(latencies, 0.99), 3) if latencies else None,
        answer_p50_s=round(statistics.median(latencies), 3) if latencies else None,
    )
    print(f"  change -> answers: {len(latencies)} of {still} waiting, {new} with a new index; "
          f"max {results['answer_max_s']} s, p99 {results['answer_p99_s']} s, "
          f"p50 {results['answer_p50_s']} s; connections lost: {results['lost']}", flush=True)
    for watcher in watchers:
        if watcher.transport is not None:
            watcher.transport.close()
    await loop.run_in_executor(None, settle, pgid)
    after = await loop.run_in_executor(None, lookups, port, load, workdir)
    results["lookups_after_watchers"] = after
    results["lookup_ratio"] = busy["rps"] / ((quiet["rps"] + after["rps"]) / 2)
    print(f"  lookups, no watcher again: {after['rps']:.0f}/s; with {count} waiting: "
          f"{results['lookup_ratio']:.0%} of the mean without", flush=True)
    return results


def server_command(template: str | None, port: int) -> list[str]:
    if template is None:
        return keyard_serve_command(port)
    return shlex.split(template.format(port=port, python=sys.executable))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.watchers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--command", help="the server to run instead of `keyard serve` with "
                        "its defaults: {port} and {python} are replaced (it serves keyard on "
                        "127.0.0.1:{port})")
    parser.add_argument("--label", default="keyard serve", help="names the server in the results")
    parser.add_argument("--seconds", type=float, default=3, help="seconds of each wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs of each load (median)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    limit = raise_open_files(args.watchers + 1024)
    if limit < args.watchers + 100:
        raise SystemExit(f"the limit of open files is {limit}: too few for {args.watchers}")
    load = http_load.Load(seconds=args.seconds, repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="keyard-watchers-") as temp:
        workdir = Path(temp)
        config = workdir / "config.json"
        config.write_text(json.dumps(
            # Leases outlast the run: an expiry mid-run would wake the watchers early.
            {"store_type": "sqlite", "default_ttl": 3600,
             "sqlite": {"path": str(workdir / "registry.db")}}
        ))
        port = free_port()
        command = server_command(args.command, port)
        print(f"{args.label}: {' '.join(command)}", flush=True)
        env = {"KEYARD_CONFIG": str(config)}
        with serving(command, port, env, workdir / "server.log") as process:
            http_load.register_population(port, POPULATION)
            results = asyncio.run(measure(port, process.pid, args.watchers, load, workdir))
    results = {"label": args.label, "command": " ".join(command), **results}
    line = json.dumps(results)
    print(f"BENCH_JSON {line}", flush=True)
    if args.out is not None:
        args.out.write_text(line + "\n")
    return results


if __name__ == "__main__":
    main()
