"""The benchmark harness (``bench/``): it runs end to end, and refuses to measure errors.

These tests check that the harness works, not how fast keyard is: the figures
come from ``bash bench/run.sh`` and are never asserted by timed tests.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import http_load, report
from tests.conftest import free_port, require_program
from tests.gunicorn_server import start

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    require_program("wrk", "wrk")
    require_program("etcd", "etcd-server")
    require_program("redis-server", "redis-server")
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    readme.write_text(f"before\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    assert bench_main.main(["--quick", "--out", str(out), "--readme", str(readme)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_measures_every_store_over_http_against_the_baseline(quick_results):
    _, results = quick_results
    defaults = [run for run in results["http"] if run["default"]]
    assert [run["store"] for run in defaults] == [
        "simple", "sqlite", "redis", "redis+cache", "etcd", "etcd+cache"
    ]  # fmt: skip
    for run in defaults:
        for scenario in ("lookup", "choose", "heartbeat"):
            figures = run["scenarios"][scenario]
            assert figures["keyard"]["requests"] > 0 and figures["baseline"]["requests"] > 0
            assert figures["ratio"] == pytest.approx(
                figures["keyard"]["rps"] / figures["baseline"]["rps"]
            )
            assert 0 < figures["keyard"]["p50_us"] <= figures["keyard"]["p99_us"]
    compared = {run["gunicorn"] for run in results["http"] if not run["default"]}
    assert "sync 2w" in compared and "gthread 1w x4t" in compared


def test_quick_run_draws_the_cost_curve_for_every_store(quick_results):
    _, results = quick_results
    for store in ("simple", "sqlite", "redis", "redis+cache", "etcd", "etcd+cache"):
        points = results["curves"][store]
        assert [p["instances"] for p in points] == [110, 1010]
        assert all(p["lookup_us"] > 0 and p["heartbeat_us"] > 0 for p in points)
    assert 0 < results["memory"]["bytes_per_instance"] < 10_000


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
    assert "memory store: <= 1024 bytes per instance" in readme


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


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_lua_heartbeat_script_names_every_instance_of_the_population():
    script = http_load.scripts(25)["heartbeat"]
    assert script.count("service_name=svc-") == 25
    assert "version=1&location=http%3A%2F%2F10.0.0.24%3A8080" in script
