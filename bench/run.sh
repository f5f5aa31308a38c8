#!/usr/bin/env bash
# Set up and run keyard's benchmarks on a fresh machine: wrk, etcd and redis-server from
# Debian's packages (when root), a virtualenv with keyard (granian and gunicorn with it) and matplotlib, then
# the suite.
# Refreshes docs/bench/results.json, docs/bench/chart.png and the README's table.
# Extra arguments go to `python -m bench` (--quick, --stores ..., --no-readme, --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-servers.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
.venv/bin/python -m bench "$@"
