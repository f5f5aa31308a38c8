"""keyard's benchmarks: HTTP throughput against a bare falcon baseline, and in-process cost.

Run them with ``bash bench/run.sh`` (``--help`` lists the options). Results go to
``docs/bench/results.json``, the charts beside it, and the table in the README.
"""
