#!/usr/bin/env bash
# Install the real servers the store tests start (etcd and Redis) and the HTTP load tool the
# benchmarks use (wrk), from Debian's packages. Does nothing when all are present. Needs root (or sudo) to install; otherwise it says how.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "keyard tests: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  echo "keyard tests: without them the etcd/Redis/benchmark tests skip locally and fail under CI=true" >&2
  exit 0
fi
echo "keyard tests: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages may start system-wide daemons on the default ports; the tests use their own.
for service in etcd redis-server; do
  "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true
done
