"""Wake-up latency of a watcher: from a write's return in one process to a waiter's wake-up
in another, on the same store (``python -m bench.wakeup [--stores sqlite redis etcd]``).

The writer is a child process that registers an instance each time it is told to and
reports the moment its ``put`` returned; the waiter, in this process, waits on the
service's change index with :meth:`Store.wait_for_change`. Prints the median and p99 in
milliseconds per store (both clocks are the machine's ``time.time()``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import backends
from keyard.model import DEFAULT_NAMESPACE
from keyard.stores import create_store

_WRITER = """
import json, sys, time
from keyard.stores import create_store
from keyard.testing.store_contract import make
store = create_store(sys.argv[1], json.loads(sys.argv[2]))
for line in sys.stdin:
    store.put(make(service="wakeup", location=f"loc-{line.strip()}"))
    print(time.time(), flush=True)
store.close()
"""


def measure(store_name: str, options: dict[str, Any], rounds: int) -> list[float]:
    """Milliseconds from each write's return to the waiter's wake-up, ``rounds`` times."""
    name = backends.store_type(store_name)
    store = create_store(name, options)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, name, json.dumps(options)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    latencies = []
    try:
        for n in range(rounds):
            index = store.change_index(DEFAULT_NAMESPACE, "wakeup")
            woken: list[float] = []

            def wait(index: int = index, woken: list[float] = woken) -> None:
                store.wait_for_change(DEFAULT_NAMESPACE, "wakeup", index, 10)
                woken.append(time.time())

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.05)  # the waiter is waiting
            writer.stdin.write(f"{n}\n")
            writer.stdin.flush()
            wrote = float(writer.stdout.readline())
            waiter.join(15)
            latencies.append((woken[0] - wrote) * 1000)
    finally:
        writer.stdin.close()
        writer.wait(30)
        store.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis", "etcd"])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for store_name in args.stores:
            with backends.running(store_name, Path(workdir) / store_name) as options:
                found = sorted(measure(store_name, options, args.rounds))
            p99 = found[min(len(found) - 1, int(len(found) * 0.99))]
            print(f"{store_name}: median {statistics.median(found):.1f} ms, "
                  f"p99 {p99:.1f} ms, max {found[-1]:.1f} ms ({len(found)} wake-ups)")


if __name__ == "__main__":
    main()
