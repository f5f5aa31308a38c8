#!/usr/bin/env bash
# Set up and run keyard's whole test suite on a fresh machine:
# the real etcd and Redis servers and wrk, a virtualenv with keyard, its test tools and
# the benchmarks' matplotlib (the benchmark harness is tested too),
# then ruff, mypy and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-servers.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'

echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && .venv/bin/python -m pytest "$@"
