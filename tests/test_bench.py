"""The benchmark harness (``bench/``): it runs end to end, and refuses to measure errors.

These tests check that the harness works, not how fast keyard is: the figures
come from ``bash bench/run.sh`` and are never asserted by timed tests.

The quick run measures every store; ``KEYARD_BENCH_STORES`` (names separated by
spaces or commas, e.g. ``KEYARD_BENCH_STORES=simple``) limits it to those, so the
harness can be checked on a branch where only some stores work.
"""

from __future__ import annotations

import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from bench import __main__ as bench_main
from bench import backends, http_load, in_process, population, report, servers
from keyard.api.native import fields
from keyard.model import DEFAULT_NAMESPACE
from keyard.registry import Registry
from keyard.server import WORKER_CLASS
from keyard.stores.memory import MemoryStore
from tests.conftest import free_port, require_program
from tests.gunicorn_server import start

pytestmark = pytest.mark.slow

STORES = [
    name for name in os.environ.get("KEYARD_BENCH_STORES", "").replace(",", " ").split() if name
] or list(backends.STORES)
NEEDS = {"redis": ("redis-server", "redis-server"), "etcd": ("etcd", "etcd-server")}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    require_program("wrk", "wrk")
    require_program("etcd", "etcd-server")  # the peer: etcd's own v2 GET
    for store in STORES:
        if backends.store_type(store) in NEEDS:
            require_program(*NEEDS[backends.store_type(store)])
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    readme.write_text(f"before\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    argv = ["--quick", "--stores", *STORES, "--out", str(out), "--readme", str(readme)]
    assert bench_main.main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_measures_each_store_under_each_server_against_the_baseline(quick_results):
    _, results = quick_results
    runs = results["http"]
    assert [(run["store"], run["server"]) for run in runs] == [
        (store, server) for store in STORES for server in ("granian", "gunicorn")
    ]
    for run in runs:
        for scenario in ("lookup", "choose", "heartbeat"):
            figures = run["scenarios"][scenario]
            assert figures["keyard"]["requests"] > 0 and figures["baseline"]["requests"] > 0
            assert figures["ratio"] == pytest.approx(
                figures["keyard"]["rps"] / figures["baseline"]["rps"]
            )
            assert 0 < figures["keyard"]["p50_us"] <= figures["keyard"]["p99_us"]
    if "sqlite" in STORES:
        compared = {run["settings"] for run in results["settings"]}
        assert compared == {"granian 1w x4t"}  # the quick run compares the first only
    else:
        assert "settings" not in results


@pytest.mark.skipif("sqlite" not in STORES, reason="keyard serve runs on the default store")
def test_quick_run_loads_keyard_serve_as_a_user_runs_it(quick_results):
    _, results = quick_results
    serve = results["serve"]
    assert serve["store"] == "sqlite"
    assert serve["command"].startswith("keyard serve --bind 127.0.0.1:")
    for scenario in ("lookup", "choose", "heartbeat"):
        assert serve["scenarios"][scenario]["keyard"]["requests"] > 0
    # Its goals' partners are loaded in turn with its lookups, run for run.
    beside = serve["scenarios"]["lookup"]["beside"]
    assert set(beside) == {"keyard, gunicorn gthread 2w x4t", "etcd v2 GET"}
    for figures in beside.values():
        assert figures["runs"] == serve["scenarios"]["lookup"]["keyard"]["runs"]
        assert figures["requests"] > 0
    assert "beside" not in serve["scenarios"]["heartbeat"]


@pytest.mark.skipif("sqlite" not in STORES, reason="the peers are loaded beside keyard serve")
def test_quick_run_measures_etcd_own_v2_get_of_the_target(quick_results):
    _, results = quick_results
    (etcd,) = results["peers"]
    assert etcd["lookup"] == results["serve"]["scenarios"]["lookup"]["beside"]["etcd v2 GET"]
    assert etcd["peer"] == "etcd v2 GET"
    assert etcd["request"].endswith(f"/{population.TARGET}?recursive=true")
    assert etcd["lookup"]["requests"] > 0 and etcd["lookup"]["rps"] > 0


def test_quick_run_draws_the_cost_curve_for_each_store(quick_results):
    _, results = quick_results
    figures = ("lookup_us", "bare_lookup_us", "heartbeat_us", "weighted_us", "bare_weighted_us",
               "tag_lookup_us")  # fmt: skip
    assert list(results["curves"]) == STORES
    for points in results["curves"].values():
        assert [p["instances"] for p in points] == [110, 1010]
        assert all(p[figure] > 0 for p in points for figure in figures)
    memory = results["memory"]
    assert 0 < memory["bytes_per_instance"] < 10_000
    assert memory["tags_per_instance"] == 2 and memory["metadata_keys_per_instance"] == 1


def test_quick_run_writes_the_chart_and_only_the_readme_table(quick_results):
    out, results = quick_results
    png = (out / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 600 and height > 300
    readme = (out / "README.md").read_text()
    assert readme.startswith("before\n") and readme.endswith("after\n")
    assert "old table" not in readme
    assert report.table(results) in readme
    assert "| memory store: bytes per instance | <= 1,024 bytes |" in readme
    assert "2 tags and 1 metadata key each" in readme


@pytest.mark.skipif("sqlite" not in STORES, reason="the goals of keyard serve need sqlite")
def test_readme_table_shows_every_goal_of_the_default_server(quick_results):
    _, results = quick_results
    table = report.table(results)
    for goal in (
        "| lookups, `keyard serve` (sqlite) / keyard under gunicorn gthread 2w x4t | >= 5.00x |",
        "| lookups, sqlite / bare falcon, both under granian 2w x4t | >= 0.90x |",
        "| lookups, `keyard serve` (sqlite) / etcd's own v2 GET of the same 10 instances "
        "| >= 1.50x |",
        "| health checks, `keyard serve` (sqlite), 2 cores | >= 12,000/s |",
    ):
        assert goal.replace("2 cores", f"{os.cpu_count()} cores") in table
    lookup = results["serve"]["scenarios"]["lookup"]
    gunicorn = lookup["beside"]["keyard, gunicorn gthread 2w x4t"]
    over_gunicorn = lookup["keyard"]["rps"] / gunicorn["rps"]
    start = "| lookups, `keyard serve` (sqlite) / keyard under gunicorn"
    (row,) = [line for line in table.splitlines() if line.startswith(start)]
    assert f"| {over_gunicorn:.2f}x (" in row and "in alternating runs" in row


def test_readme_table_shows_the_in_process_goals_of_memory_and_sqlite(quick_results):
    _, results = quick_results
    table = report.table(results)
    for store in set(STORES) & {"simple", "sqlite"}:
        points = results["curves"][store]
        ratio = statistics.median(p["lookup_us"] / p["bare_lookup_us"] for p in points)
        assert (
            f"| {store}: a lookup of 10 instances / the bare falcon handler's answer of the "
            f"same bytes, in process | <= 1.50x | {ratio:.2f}x ("
        ) in table
        assert f"| {store}: a choice of 10 instances / the bare falcon handler's" in table


def test_quick_run_measures_watchers_on_keyard_serve_and_wake_ups_per_store(quick_results):
    _, results = quick_results
    found = results["watchers"]
    assert found["watchers"] == 50
    assert found["answered_with_new_index"] == found["waiting_at_change"] > 0
    assert found["lost"] == 0
    table = report.table(results)
    assert "| 50 watchers on `keyard serve` (sqlite): the last answered after one change " \
        "| <= 2,000 ms |" in table
    assert "| 50 watchers: memory per waiting watcher (the server's RSS growth) " \
        "| <= 50,000 bytes |" in table
    for store in set(STORES) & {"sqlite", "redis", "etcd"}:
        wake = results["wakeups"][store]
        assert wake["rounds"] == 5 and wake["median_ms"] <= wake["p99_ms"] <= wake["max_ms"]
        goal = "250" if store == "etcd" else "100"
        assert f"| {store}: p99 of a watcher's wake-up after a write in another process " \
            f"| <= {goal} ms |" in table


def test_a_missed_goal_says_by_how_much():
    target = report.Target("lookups, x / y", 5.0, 4.0, "4 vs 1 req/s")
    assert not target.met and target.short_by == pytest.approx(0.20)
    assert report.Target("growth", 1.25, 1.0, "", at_most=True).met
    assert report.Target("bytes", 1024, 1280, "", unit=" bytes", at_most=True).short_by == 0.25
    results = {
        "http": [], "curves": {}, "command": "bash bench/run.sh",
        "machine": {"cores": 2, "date": "2026-01-01", "summary": "2 cores"},
        "memory": {"instances": 10, "bytes_per_instance": 2048.0,
                   "tags_per_instance": 2, "metadata_keys_per_instance": 1},
    }  # fmt: skip
    table = report.table(results)
    assert (
        "| 2,048 bytes (10 instances, 2 tags and 1 metadata key each) | **missed** by 100% |"
        in (table)
    )
    missed = "- memory store: bytes per instance: 2,048 bytes against a goal of 1,024 bytes"
    assert f"{missed}, 100% short." in table


def test_keyard_and_its_baseline_run_under_one_server_description():
    granian = servers.granian(2, 4)
    argv = granian.argv("bench.baseline:app", 8123)
    assert argv[1:3] == ["-m", "granian"] and argv[-1] == "bench.baseline:app"
    assert argv[argv.index("--interface") + 1] == "wsgi"
    assert "8123" in argv and argv[argv.index("--blocking-threads") + 1] == "4"
    assert granian.label == "granian 2w x4t"
    gunicorn = servers.gunicorn(2, 4).argv("keyard.wsgi:app", 8123)
    assert "127.0.0.1:8123" in gunicorn and "--reuse-port" in gunicorn
    assert gunicorn[gunicorn.index("--worker-class") + 1] == WORKER_CLASS


def test_a_server_that_exits_stops_the_benchmark_with_its_output(tmp_path):
    argv = [sys.executable, "-c", "print('no such app'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="exited with 3:\nno such app"):  # noqa: SIM117
        with servers.serving(argv, free_port(), {}, tmp_path / "server.log"):
            pass


def test_answers_other_than_2xx_stop_the_benchmark(tmp_path):
    """A benchmark that measured fast 404s would be wrong: the harness refuses."""
    require_program("wrk", "wrk")
    port = free_port()
    with start("keyard.wsgi:app", port, {"KEYARD_STORE_TYPE": "simple"}):
        script = "wrk.path = '/keyard?service_name=nobody&load_balancer_strategy=random'"
        with pytest.raises(RuntimeError, match="requests failed"):
            http_load.wrk(f"http://127.0.0.1:{port}", script, http_load.Load(seconds=1), tmp_path)


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        report.update_readme(readme, "table")
    assert readme.read_text() == "no markers here\n"


def test_growth_is_the_largest_cost_over_the_smallest():
    points = [{"lookup_us": 20.0}, {"lookup_us": 22.0}, {"lookup_us": 25.0}]
    assert report.growth(points, "lookup_us") == pytest.approx(1.25)


def test_lua_heartbeat_script_names_every_instance_of_the_population():
    script = http_load.scripts(25)["heartbeat"]
    assert script.count("service_name=svc-") == 25
    assert "version=1&location=http%3A%2F%2F10.0.0.24%3A8080" in script


def test_population_records_are_what_the_registry_makes_of_their_registrations():
    """The in-process stores hold the records a real registration would have made."""
    now = 1_800_000_000.0
    registry = Registry(MemoryStore(), clock=lambda: now)
    for registration in population.targets() + [population.other(n) for n in (0, 7, 12_345)]:
        stored, created = registry.register(registration._replace(ttl=population.TTL))
        assert created
        assert stored == population.record(registration, now)
        assert len(stored.tags) == population.TAGS_PER_INSTANCE
        assert len(stored.metadata) == population.METADATA_KEYS_PER_INSTANCE


def test_registration_form_reads_back_as_its_registration():
    for registration in population.targets()[:2] + [population.other(3)]:
        form = dict(parse_qsl(population.registration_form(registration)))
        read, uses_new_fields = fields.registration(form, DEFAULT_NAMESPACE, "")
        assert read == registration and uses_new_fields


def test_heartbeat_form_refreshes_the_populated_record_and_keeps_its_labels():
    """A health check names the record the population put (its derived id): 200, not 201."""
    now = 1_800_000_000.0
    store = MemoryStore()
    (record,) = population.instances(5, 6, now)
    store.put(record)
    registry = Registry(store, clock=lambda: now + 10)
    form = dict(parse_qsl(population.heartbeat_form(5)))
    beat, _ = fields.registration(form, DEFAULT_NAMESPACE, "")
    stored, created = registry.heartbeat(beat)
    assert not created
    assert stored.key == record.key
    assert (stored.tags, stored.metadata, stored.ttl) == (record.tags, record.metadata, record.ttl)
    assert stored.expires_at == now + 10 + population.TTL


def test_tag_filter_keeps_half_of_the_target():
    store = MemoryStore()
    for record in population.target_instances(time.time()):
        store.put(record)
    tagged = [i for i in store.lookup(DEFAULT_NAMESPACE, population.TARGET, None, time.time())
              if population.TAG_FILTER in i.tags]  # fmt: skip
    assert len(tagged) == population.TARGET_INSTANCES // 2


def test_in_process_curve_measures_every_request_on_the_memory_store(tmp_path):
    points = in_process.curve("simple", (20, 50), 10, tmp_path)
    assert [p["instances"] for p in points] == [30, 60]
    for point in points:
        for figure in ("lookup_us", "heartbeat_us", "weighted_us", "tag_lookup_us"):
            assert point[figure] > 0


def test_the_watchers_bench_answers_every_watcher_after_one_change(tmp_path: Path) -> None:
    require_program("wrk", "wrk")
    from bench import watchers

    out = tmp_path / "watchers.json"
    results = watchers.main(["--watchers", "50", "--seconds", "1", "--repeats", "1",
                             "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == results
    assert results["watchers"] == 50 and results["early"] == 0
    assert results["answered_with_new_index"] == 50 and results["lost"] == 0
    assert results["answer_max_s"] is not None and results["rss_growth_per_watcher_bytes"] > -1e9
    assert results["lookups_with_watchers"]["rps"] > 0
    before, after = (results[k]["rps"] for k in ("lookups_without_watchers",
                                                  "lookups_after_watchers"))
    assert results["lookup_ratio"] == pytest.approx(
        results["lookups_with_watchers"]["rps"] / ((before + after) / 2))
