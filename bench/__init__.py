"""keyard's benchmarks: HTTP throughput against a bare falcon baseline and the peers.

Under granian and gunicorn alike, ``keyard serve`` as a user runs it, etcd's own v2
GET of the same instances, and the in-process cost of a request as the registry grows.

Run them with ``bash bench/run.sh`` (``--help`` lists the options). Results go to
``docs/bench/results.json``, the chart beside it, and the tables in the README.
"""
