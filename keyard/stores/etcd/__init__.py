"""The etcd store (``store_type: "etcd"``), one module per job.

- :mod:`~keyard.stores.etcd.store`: :class:`EtcdStore`, the Store interface;
- :mod:`~keyard.stores.etcd.keys`: the key codec, the key layout and the record values;
- :mod:`~keyard.stores.etcd.cluster`: the members, failover and discovery, the deadline;
- :mod:`~keyard.stores.etcd.client`: one member's wire connection (requests, watches);
- :mod:`~keyard.stores.etcd.cache`: the cache (option ``cache``), a per-process copy;
- :mod:`~keyard.stores.etcd.upgrade`: keyard 0.2.0's keys converted at the first call.

``keyard.stores.etcd:EtcdStore`` is the name the store registry loads.
"""

from keyard.stores.etcd.keys import MAX_SEGMENT, encode_part
from keyard.stores.etcd.store import EtcdStore

__all__ = ["MAX_SEGMENT", "EtcdStore", "encode_part"]
