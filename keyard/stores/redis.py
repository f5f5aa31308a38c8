"""The Redis store (``store_type: "redis"``): a registry shared by keyards on many hosts.

Keys, under the configured prefix; ``<ns>`` and ``<service>`` are percent-encoded
(``quote(safe="")``: only ``A-Z a-z 0-9 _ . - ~ %`` remain, so ``/`` cannot occur in
either and separates them; ``:``, ``{``, ``}`` and any unicode are safe):

- ``<prefix>:{<ns>/<service>}:leases``, a sorted set: member = the instance's
  member name (the JSON text of its ``instance_id``, ASCII), score = ``expires_at``;
- ``<prefix>:{<ns>/<service>}:records``, a hash: member name -> the record
  (:func:`record_text`: a JSON object, one field a line, times as exact doubles);
- ``<prefix>:{<ns>}:services``, a sorted set per namespace: member = ``<service>``
  (encoded), score = at least the latest ``expires_at`` of its instances, so that
  :meth:`RedisStore.services` reads the live services without a SCAN.

The ``{...}`` is a Redis Cluster hash tag: both keys of a service share a slot.
(The namespace index is in another slot; the write scripts name it in ``KEYS``,
so they run on one Redis server, not across a Cluster's nodes.)

Lookups read only the live range of the service's sorted set (O(instances of the
service)); writes are Lua scripts, atomic and one round trip each, that also purge
the service's expired members and set its keys to expire a minute after its last
instance, so an abandoned service disappears by itself. A heartbeat's merge with
the live record (:func:`keyard.stores.base.merged`) happens inside its script, line
by line, without decoding a number (Lua's cjson would round doubles to 14 digits).

Each write script also publishes the change it made on ``<prefix>:changes:db<n>``,
for the stores whose ``cache`` option answers lookups from their cache, a
per-process copy of the services looked up (:mod:`keyard.stores.redis_cache`).

When the store opens, the keys keyard 0.2.0 wrote under the same prefix
(``<prefix>:{<service>}:expiry`` and ``:ttl``) are converted by
:meth:`RedisStore.upgrade`, each service by one script.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Hashable, Iterator, Mapping
from json.encoder import encode_basestring_ascii as _text
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from keyard.errors import ConfigError, IndexTooOld, StoreUnavailable
from keyard.model import (
    DEFAULT_NAMESPACE,
    UP,
    Instance,
    InstanceKey,
    ServiceSummary,
    from_keyard_0_2,
)
from keyard.stores import options as opt
from keyard.stores.background import BackgroundThread, Backoff, PerProcess
from keyard.stores.base import Store
from keyard.stores.changes import FIRST_INDEX, LOG_SECONDS, Change, Sweeper, Waiters
from keyard.stores.redis_cache import REMOVED, RedisCache, Removal

log = logging.getLogger(__name__)

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "keyard"
DEFAULT_TIMEOUT = 2.0
#: How long a service's keys outlive its last instance's expiry, in milliseconds.
KEY_GRACE_MS = 60_000
#: How many expired members one write purges at most.
PURGE_BATCH = 500
#: How many times the conversion of one 0.2.0 service is tried while 0.2.0 writes to it.
UPGRADE_ATTEMPTS = 5

_OPTIONS = ("url", "host", "port", "db", "password", "prefix", "timeout", "cache")
_URL_SCHEMES = ("redis", "rediss", "unix")

# Every write script: KEYS[1] = the service's sorted set, KEYS[2] = its records,
# KEYS[3] = the namespace's index of services; ARGV[1], ARGV[2], ARGV[3] = the channel,
# the writer's id of the write (or ''), the service's tag (as in its keys); ARGV[4] =
# the service's member of the index. The last four KEYS are the change keys
# (:func:`_change_keys`): the namespace's sequence, its services' indexes, its change
# log and the store's services by earliest expiry.
_COMMON_LUA = """
local SEQUENCE, INDEXES, LOG, EXPIRING = KEYS[#KEYS - 3], KEYS[#KEYS - 2], KEYS[#KEYS - 1],
    KEYS[#KEYS]
local DROPPED = SEQUENCE .. ':dropped'

-- Numbers a change of the service in its namespace (its index, the catalog's), logs it as
-- '<index> <kind> <logged at> <service> <record>' (a line each), trims what the log
-- need not keep any more, and wakes the waiters of every process (the channel: the sequence key).
local function changed(kind, record, now)
    local index = redis.call('INCR', SEQUENCE)
    if index == 1 then index = redis.call('INCR', SEQUENCE) end  -- 1: before any change
    redis.call('HSET', INDEXES, ARGV[4], index)
    redis.call('ZADD', LOG, index,
        index .. '\\n' .. kind .. '\\n' .. now .. '\\n' .. ARGV[4] .. '\\n' .. record)
    local cutoff = tonumber(now) - @LOG_SECONDS@
    local oldest = redis.call('ZRANGE', LOG, 0, 1)
    for _, entry in ipairs(oldest) do
        local number, logged = string.match(entry, '^(%d+)\\n[^\\n]*\\n([^\\n]*)\\n')
        if tonumber(logged) < cutoff then
            redis.call('ZREM', LOG, entry)
            redis.call('SET', DROPPED, number)
        end
    end
    redis.call('PUBLISH', SEQUENCE, index)
end

local function purge(now, batch)
    local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
    if #expired > 0 then
        local records = redis.call('HMGET', KEYS[2], unpack(expired))
        redis.call('ZREM', KEYS[1], unpack(expired))
        redis.call('HDEL', KEYS[2], unpack(expired))
        for _, record in ipairs(records) do
            if record then changed('expired', record, now) end
        end
    end
end

-- Whether two records (by field name) differ only in their lease.
local LEASE = {ttl = true, last_heartbeat_at = true, expires_at = true}
local function lease_only(before, after)
    for name, line in pairs(before) do
        if not LEASE[name] and after[name] ~= line then return false end
    end
    for name, line in pairs(after) do
        if not LEASE[name] and before[name] ~= line then return false end
    end
    return true
end

-- The service's keys and its index entry live until a grace period after its last expiry.
local function keep_alive(now, grace)
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    if #last == 0 then
        redis.call('ZREM', KEYS[3], ARGV[4])
        redis.call('ZREM', EXPIRING, ARGV[3])
        return
    end
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    redis.call('ZADD', EXPIRING, first[2], ARGV[3])
    local ms = math.ceil((tonumber(last[2]) - now) * 1000) + grace
    if ms < 1 then ms = 1 end
    redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ms))
    redis.call('PEXPIRE', KEYS[2], string.format('%.0f', ms))
    -- The index's score only grows (a superset is enough: services() counts the live
    -- instances), and the index outlives its longest-lived service.
    if redis.call('ZADD', KEYS[3], 'GT', 'CH', last[2], ARGV[4]) == 1
        and redis.call('PTTL', KEYS[3]) < ms then
        redis.call('PEXPIRE', KEYS[3], string.format('%.0f', ms))
    end
end

-- A record's lines by field name, and the names in their order.
local function fields(record)
    local byname, order = {}, {}
    for line in string.gmatch(record, '\\n([^\\n]*)[,}]') do
        local name = string.match(line, '^"([%w_]+)":')
        if name then
            byname[name] = line
            order[#order + 1] = name
        end
    end
    return byname, order
end

local function joined(byname, order)
    local out = {}
    for i, name in ipairs(order) do out[i] = byname[name] end
    return '{\\n' .. table.concat(out, ',\\n') .. '}'
end

local function published_put(member, record)
    redis.call('PUBLISH', ARGV[1],
        ARGV[2] .. '\\nput\\n' .. ARGV[3] .. '\\n' .. member .. '\\n' .. record)
end
"""

# ARGV[5..]: member, record, expires_at, now, keep (names, space-separated), purge batch,
# grace (ms). Stores the record merged with the live one; returns {1} if new, else
# {0, the record stored}.
_PUT_LUA = (
    _COMMON_LUA
    + """
local member, record, expires_at = ARGV[5], ARGV[6], ARGV[7]
local now = tonumber(ARGV[8])
purge(ARGV[8], tonumber(ARGV[10]))
local created = 1
local old = redis.call('ZSCORE', KEYS[1], member)
local live = old and tonumber(old) > now and redis.call('HGET', KEYS[2], member)
local change = true
if old and not live then  -- expired, not purged yet
    local gone = redis.call('HGET', KEYS[2], member)
    if gone then changed('expired', gone, ARGV[8]) end
end
if live then
    created = 0
    local mine = fields(live)
    local given, order = fields(record)
    local kept = {registered_at = true, status_override = true}
    for name in string.gmatch(ARGV[9], '%S+') do kept[name] = true end
    for name in pairs(kept) do
        if mine[name] and given[name] then given[name] = mine[name] end
    end
    if kept.ttl and mine.ttl then
        -- %.17g: the exact double, the same sum as merged()'s last_heartbeat_at + ttl
        local ttl = tonumber(string.match(mine.ttl, ':(.*)$'))
        expires_at = string.format('%.17g', now + ttl)
        given.expires_at = '"expires_at":' .. expires_at
    end
    record = joined(given, order)
    change = not lease_only(mine, given)
end
redis.call('ZADD', KEYS[1], expires_at, member)
redis.call('HSET', KEYS[2], member, record)
published_put(member, record)
if change then changed('put', record, ARGV[8]) end
keep_alive(now, tonumber(ARGV[11]))
if created == 1 then return {1} end
return {0, record}
"""
)

# ARGV[5..]: member, now, purge batch, grace. Returns the removed record if it was live.
# Publishes the removal even when there was nothing to remove (the writer waits for its id).
_DEREGISTER_LUA = (
    _COMMON_LUA
    + """
local member, now = ARGV[5], tonumber(ARGV[6])
local old = redis.call('ZSCORE', KEYS[1], member)
local record = redis.call('HGET', KEYS[2], member)
if old then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
    if record then
        changed(tonumber(old) > now and 'removed' or 'expired', record, ARGV[6])
    end
end
purge(ARGV[6], tonumber(ARGV[7]))
keep_alive(now, tonumber(ARGV[8]))
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\ndel\\n' .. ARGV[3] .. '\\n' .. member)
if old and tonumber(old) > now and record then return record end
return false
"""
)

# ARGV[5..]: member, now, the override as JSON (null or a string). The lease is not
# touched. Returns the record stored, or nil when no live record has the member (then
# nothing is published).
_SET_OVERRIDE_LUA = (
    _COMMON_LUA
    + """
local member = ARGV[5]
local old = redis.call('ZSCORE', KEYS[1], member)
if not old or tonumber(old) <= tonumber(ARGV[6]) then return false end
local live = redis.call('HGET', KEYS[2], member)
if not live then return false end
local byname, order = fields(live)
byname.status_override = '"status_override":' .. ARGV[7]
local record = joined(byname, order)
redis.call('HSET', KEYS[2], member, record)
published_put(member, record)
changed('put', record, ARGV[6])
return record
"""
)

# ARGV[5..]: now, purge batch, grace. Purges the service's expired members (each an
# expiry in its change log), as every write does; for the sweeper.
_SWEEP_LUA = (
    _COMMON_LUA
    + """
purge(ARGV[5], tonumber(ARGV[6]))
keep_alive(tonumber(ARGV[5]), tonumber(ARGV[7]))
return 0
"""
)

# KEYS: the service's sorted set and records. ARGV: now. The live records, in one
# command (one round trip).
_LOOKUP_LUA = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local found = {}
for i = 1, #live, 1000 do
    local got = redis.call('HMGET', KEYS[2], unpack(live, i, math.min(i + 999, #live)))
    for _, record in ipairs(got) do
        if record then found[#found + 1] = record end
    end
end
return found
"""

# Reads a whole service for the cache, expired members included (the cache filters them
# at each lookup's time), and publishes the mark that orders the read among the
# changes. ARGV: channel, token, tag. Returns what _LOOKUP_LUA returns.
_LOAD_LUA = """
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
local found = {}
for i = 1, #all, 1000 do
    local got = redis.call('HMGET', KEYS[2], unpack(all, i, math.min(i + 999, #all)))
    for _, record in ipairs(got) do
        if record then found[#found + 1] = record end
    end
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\nmark\\n' .. ARGV[3])
return found
"""

# KEYS: a namespace's index. ARGV: now. Forgets the services whose last instance has
# expired; returns the others (encoded names).
_SERVICES_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# Converts one service of keyard 0.2.0. KEYS[4], KEYS[5]: its old sorted set and ttl
# hash; ARGV[5..]: now, grace, how many members the caller read, then per member read:
# old member, score, ttl, new member, new record ('' to drop it). Returns -1 when the
# old keys changed since the caller read them (read again), else how many it converted
# (0 when another process did it first). Keeps a live record of the new layout.
_UPGRADE_LUA = (
    _COMMON_LUA
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('DEL', KEYS[5])
    return 0
end
if redis.call('ZCARD', KEYS[4]) ~= tonumber(ARGV[7]) then return -1 end
local now = tonumber(ARGV[5])
for i = 8, #ARGV, 5 do
    local score = redis.call('ZSCORE', KEYS[4], ARGV[i])
    if not score or tonumber(score) ~= tonumber(ARGV[i + 1])
        or redis.call('HGET', KEYS[5], ARGV[i]) ~= ARGV[i + 2] then
        return -1
    end
end
local converted = 0
for i = 8, #ARGV, 5 do
    local member, record = ARGV[i + 3], ARGV[i + 4]
    if record ~= '' and tonumber(ARGV[i + 1]) > now then
        local current = redis.call('ZSCORE', KEYS[1], member)
        if not current or tonumber(current) <= now then
            redis.call('ZADD', KEYS[1], ARGV[i + 1], member)
            redis.call('HSET', KEYS[2], member, record)
            published_put(member, record)
            changed('put', record, ARGV[5])
            converted = converted + 1
        end
    end
end
redis.call('DEL', KEYS[4], KEYS[5])
keep_alive(now, tonumber(ARGV[6]))
return converted
"""
)


# -- records -------------------------------------------------------------------------


def record_text(instance: Instance) -> str:
    """The record as stored: a JSON object, one field a line, ASCII only.

    Strings are JSON-escaped with ``ensure_ascii`` (so no field holds a raw newline,
    and lone surrogates round-trip), times are ``repr`` of the double (exact).
    ``namespace`` and ``service_name`` are in the key, not in the record.
    """
    tags = ",".join(map(_text, instance.tags))
    metadata = ",".join([_text(k) + ":" + _text(v) for k, v in instance.metadata.items()])
    override = instance.status_override
    return (
        f'{{\n"instance_id":{_text(instance.instance_id)}'
        f',\n"version":{_text(instance.version)}'
        f',\n"location":{_text(instance.location)}'
        f',\n"status":{_text(instance.status)}'
        f',\n"status_override":{"null" if override is None else _text(override)}'
        f',\n"tags":[{tags}]'
        f',\n"metadata":{{{metadata}}}'
        f',\n"weight":{int(instance.weight)}'
        f',\n"ttl":{int(instance.ttl)}'
        f',\n"registered_at":{float(instance.registered_at)!r}'
        f',\n"last_heartbeat_at":{float(instance.last_heartbeat_at)!r}'
        f',\n"expires_at":{float(instance.expires_at)!r}}}'
    )


def instance_from(namespace: str, service_name: str, fields: dict[str, Any]) -> Instance:
    """The :class:`Instance` of a decoded record (see :func:`record_text`)."""
    return Instance(
        namespace=namespace,
        service_name=service_name,
        instance_id=fields["instance_id"],
        version=fields["version"],
        location=fields["location"],
        status=fields["status"],
        status_override=fields["status_override"],
        tags=tuple(fields["tags"]),
        metadata=fields["metadata"],
        weight=fields["weight"],
        ttl=fields["ttl"],
        registered_at=float(fields["registered_at"]),
        last_heartbeat_at=float(fields["last_heartbeat_at"]),
        expires_at=float(fields["expires_at"]),
    )


#: What a value that keyard did not write raises when read as a record.
_NOT_A_RECORD = (ValueError, KeyError, TypeError, IndexError, RecursionError)


@functools.lru_cache(maxsize=16384)
def parse_record(namespace: str, service_name: str, record: bytes) -> Instance:
    """The instance of a stored record; raises ValueError (or KeyError, TypeError...)
    for a value keyard did not write.

    Memoized: between two heartbeats of an instance every lookup reads the same record
    (an Instance is immutable, so one may be shared).
    """
    return instance_from(namespace, service_name, json.loads(record))


def _parsed(namespace: str, service_name: str, record: bytes) -> Instance | None:
    try:
        return parse_record(namespace, service_name, record)
    except _NOT_A_RECORD:
        return None  # another program's data under keyard's keys


def _instances(namespace: str, service_name: str, records: list[bytes]) -> list[Instance]:
    """The instances of a lookup script's answer, unordered (values keyard did not
    write are skipped)."""
    try:
        return [parse_record(namespace, service_name, record) for record in records]
    except _NOT_A_RECORD:
        found = (_parsed(namespace, service_name, record) for record in records)
        return [instance for instance in found if instance is not None]


def _order(instance: Instance) -> tuple[str, str, str]:
    return instance.version, instance.location, instance.instance_id


@functools.lru_cache(maxsize=65536)
def _member(instance_id: str) -> str:
    """The sorted set's member and the hash's field of an instance: its id as ASCII JSON."""
    return _text(instance_id)


def _score(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same double


# -- keys ------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="", errors="surrogatepass")


def _unquoted(name: str) -> str:
    return urllib.parse.unquote(name, errors="surrogatepass")


@functools.lru_cache(maxsize=4096)
def _tag(namespace: str, service_name: str) -> str:
    """The service's hash tag content: ``<ns>/<service>``, both percent-encoded (memoized)."""
    return f"{_quoted(namespace)}/{_quoted(service_name)}"


@functools.lru_cache(maxsize=4096)
def _service_keys(prefix: str, namespace: str, service_name: str) -> list[str]:
    """The sorted set's, the records' and the namespace index's key (memoized; never mutated)."""
    base = f"{prefix}:{{{_tag(namespace, service_name)}}}"
    return [f"{base}:leases", f"{base}:records", _index_key(prefix, namespace)]


@functools.lru_cache(maxsize=1024)
def _change_keys(prefix: str, namespace: str) -> list[str]:
    """The namespace's sequence, its services' indexes, its change log; the store's services
    by earliest expiry (the last KEYS of every write script; memoized, never mutated)."""
    base = f"{prefix}:{{{_quoted(namespace)}}}"
    return [f"{base}:sequence", f"{base}:indexes", f"{base}:log", _expiring_key(prefix)]


def _expiring_key(prefix: str) -> str:
    return f"{prefix}:expiring"


def _index_key(prefix: str, namespace: str) -> str:
    return f"{prefix}:{{{_quoted(namespace)}}}:services"


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _old_keys_pattern(prefix: str) -> tuple[str, re.Pattern[str]]:
    """The SCAN pattern of 0.2.0's sorted sets under ``prefix``, and the exact form."""
    glob = _GLOB_SPECIAL.sub(r"\\\1", prefix) + ":{*}:expiry"
    exact = re.compile(re.escape(prefix) + r":\{([A-Za-z0-9_.~%-]+)\}:expiry")
    return glob, exact


def _old_member(member: bytes) -> tuple[str, str] | None:
    """The ``(version, location)`` a 0.2.0 member names, or None when keyard did not write it."""
    try:
        key = json.loads(member)
    except (ValueError, RecursionError):
        return None
    if isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return key[0], key[1]
    return None


# -- options ---------------------------------------------------------------------------


def _redacted(url: str) -> str:
    """The URL with its password, if any, replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        userinfo = f"{parts.username or ''}:***@"
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=userinfo + host))
    except ValueError:
        return "<unparsable url>"


def _check_url(url: str, shown: str) -> None:
    """ConfigError unless ``url`` is a Redis URL that redis-py reads as written.

    redis-py takes ``redis://host/abc`` as database 0 and ``redis://host:0`` as
    port 0; refuse those rather than talk to another database than meant.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"redis store: option url {shown!r} is invalid: {exc}") from exc
    if parts.scheme not in _URL_SCHEMES:
        raise ConfigError(
            f"redis store: option url must start with redis://, rediss:// or unix://, got {shown!r}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(
                f"redis store: option url {shown!r} names no socket (unix:///path/redis.sock)"
            )
        return
    if not parts.hostname:
        raise ConfigError(f"redis store: option url {shown!r} names no host")
    if port == 0:
        raise ConfigError(f"redis store: option url {shown!r}: the port must be 1 to 65535")
    database = parts.path.lstrip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ConfigError(
            f"redis store: option url {shown!r}: the path must be a database number "
            f"(redis://host:6379/0), got {parts.path!r}"
        )


def _is_authentication_failure(exc: redis.exceptions.RedisError) -> bool:
    """Whether Redis refused ``exc``'s command for want of (the right) password."""
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return True
    text = str(exc)
    return text.startswith(("NOAUTH", "WRONGPASS")) or "HELLO must be called" in text


class RedisStore(Store):
    """Instances in Redis: per service a sorted set by expiry and a hash of records."""

    waiters: Waiters  # always kept

    name = "redis"
    OPTIONS = _OPTIONS
    shared_across_processes = True
    watchable = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        where: str = "redis",
        cache: bool = False,
        log_seconds: float = LOG_SECONDS,
    ) -> None:
        """Use ``client`` (which should have socket timeouts and no retries, as
        :meth:`from_options` builds it) with keys under ``prefix``. ``where`` names
        the server in error messages (no password). With ``cache``, lookups are
        answered from the cache, a per-process copy (:mod:`keyard.stores.redis_cache`).

        Converts what keyard 0.2.0 wrote under ``prefix`` (:meth:`upgrade`); when
        Redis cannot be reached now, the first call that reaches it does."""
        self.client = client
        self.prefix = prefix
        self.where = where
        self.cache = cache
        kwargs = client.connection_pool.connection_kwargs
        self.timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)
        self._has_password = bool(kwargs.get("password"))
        #: Where every write publishes its change: channels are shared by all databases.
        self.channel = f"{prefix}:changes:db{kwargs.get('db', 0)}"
        #: This process's cache (a forked child makes its own).
        self._cache: PerProcess[RedisCache] = PerProcess()
        self._closed = False
        #: Seconds of changes the log keeps at least (tests shorten it).
        self.log_seconds = log_seconds

        def script(text: str) -> Script:
            return client.register_script(text.replace("@LOG_SECONDS@", repr(float(log_seconds))))

        self._load = script(_LOAD_LUA)
        self._put = script(_PUT_LUA)
        self._deregister = script(_DEREGISTER_LUA)
        self._set_override = script(_SET_OVERRIDE_LUA)
        self._lookup = script(_LOOKUP_LUA)
        self._services = script(_SERVICES_LUA)
        self._upgrade = script(_UPGRADE_LUA)
        self._sweep_service = script(_SWEEP_LUA)
        # The change API: this process's waiters, woken by its subscriber thread; its
        # sweeper (both started by the first use of the API in the process).
        # Woken by the message every change publishes on its namespace's sequence key.
        self.waiters = Waiters(recheck=2.0)
        self._watching: PerProcess[tuple[BackgroundThread, Sweeper]] = PerProcess()
        self._upgraded = False
        self._upgrade_lock = threading.Lock()
        with contextlib.suppress(StoreUnavailable):
            self.upgrade()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisStore:
        """Options: ``url``, or ``host``/``port``/``db``/``password``; ``prefix``;
        ``timeout``; ``cache``."""
        cls.check_options(options)
        prefix = opt.text("redis", "prefix", options.get("prefix", DEFAULT_PREFIX))
        cache = opt.flag("redis", "cache", options.get("cache", False))
        timeout = opt.seconds(
            "redis", "timeout", options.get("timeout", DEFAULT_TIMEOUT), zero_ok=False, maximum=60
        )
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # No retries, whatever redis-py's defaults: an unreachable Redis gives
            # StoreUnavailable within the timeout. A pooled connection that died is
            # replaced when taken from the pool, so the store serves again as soon
            # as Redis is back.
            "retry": Retry(NoBackoff(), 0),
        }
        if "url" in options:
            both = sorted(set(options) & {"host", "port", "db", "password"})
            if both:
                raise ConfigError(
                    f"redis store: give either option url or {', '.join(both)}, not both"
                )
            url = opt.text("redis", "url", options["url"])
            shown = _redacted(url)
            _check_url(url, shown)
            try:
                client = redis.Redis.from_url(url, **common)
            except ValueError as exc:
                raise ConfigError(f"redis store: option url {shown!r} is invalid: {exc}") from exc
            return cls(client, prefix=prefix, where=shown, cache=cache)
        host = opt.text("redis", "host", options.get("host", DEFAULT_HOST))
        port = opt.whole_number(
            "redis", "port", options.get("port", DEFAULT_PORT), minimum=1, maximum=65535
        )
        db = opt.whole_number("redis", "db", options.get("db", 0), minimum=0, maximum=2**31 - 1)
        password = options.get("password")
        if password is not None:
            password = opt.text("redis", "password", password)
        client = redis.Redis(host=host, port=port, db=db, password=password, **common)
        return cls(client, prefix=prefix, where=f"redis at {host}:{port} db {db}", cache=cache)

    # -- the Store interface ---------------------------------------------------

    def put(self, instance: Instance, keep: frozenset[str] = frozenset()) -> tuple[Instance, bool]:
        """Atomic, merge included: one script, one round trip."""
        if not self._upgraded:
            self.upgrade()
        namespace, service_name = instance.namespace, instance.service_name
        args = [
            _member(instance.instance_id),
            record_text(instance),
            _score(instance.expires_at),
            _score(instance.last_heartbeat_at),
            " ".join(keep),
            PURGE_BATCH,
            KEY_GRACE_MS,
        ]
        reply = self._write(
            self._put, namespace, service_name, args, lambda r: _stored(instance, r)
        )
        return _stored(instance, reply), len(reply) == 1

    def get(self, key: InstanceKey, now: float) -> Instance | None:
        if not self._upgraded:
            self.upgrade()
        records = self._keys(key.namespace, key.service_name)[1]
        with self._translated_failures():
            record: Any = self.client.hget(records, _member(key.instance_id))
        if record is None:
            return None
        found = _parsed(key.namespace, key.service_name, record)
        return found if found is not None and found.expires_at > now else None

    def deregister(self, key: InstanceKey, now: float) -> Instance | None:
        if not self._upgraded:
            self.upgrade()
        args = [_member(key.instance_id), _score(now), PURGE_BATCH, KEY_GRACE_MS]
        reply = self._write(
            self._deregister, key.namespace, key.service_name, args, lambda r: REMOVED
        )
        return None if reply is None else parse_record(key.namespace, key.service_name, reply)

    def set_override(self, key: InstanceKey, status: str | None, now: float) -> Instance | None:
        """Atomic: one script, which publishes the new record for the caches."""
        if not self._upgraded:
            self.upgrade()
        namespace, service_name = key.namespace, key.service_name
        args = [_member(key.instance_id), _score(now), "null" if status is None else _text(status)]

        def change(reply: Any) -> Instance | None:
            return None if reply is None else parse_record(namespace, service_name, reply)

        return change(self._write(self._set_override, namespace, service_name, args, change))

    def change_stamp(self, namespace: str, service_name: str) -> Hashable | None:
        """With ``cache``, the cache's (another process's writes show after its lag)."""
        cache = self._cache_here() if self.cache else None
        return cache.stamp(namespace, service_name) if cache is not None else None

    def lookup(
        self, namespace: str, service_name: str, version: str | None, now: float
    ) -> list[Instance]:
        """With ``cache``, from this process's cache while it is current (see redis_cache)."""
        if not self._upgraded:
            self.upgrade()
        cache = self._cache_here() if self.cache else None
        if cache is not None:
            found = cache.lookup(namespace, service_name, version, now)
            if found is not None:
                return found
            tag = _tag(namespace, service_name)
            token = cache.begin_load(namespace, service_name, tag.encode("ascii"))
            if token is not None:
                instances = None
                try:
                    with self._translated_failures():
                        records = self._load(
                            keys=self._keys(namespace, service_name)[:2],
                            args=[self.channel, token, tag],
                        )
                    instances = _instances(namespace, service_name, records)
                finally:
                    cache.finish_load(
                        token,
                        None
                        if instances is None
                        else {_member(i.instance_id).encode("ascii"): i for i in instances},
                    )
                return _live(instances, version, now)
        with self._translated_failures():
            records = self._lookup(keys=self._keys(namespace, service_name)[:2], args=[_score(now)])
        found = _instances(namespace, service_name, records)
        if version is not None:
            found = [i for i in found if i.version == version]
        found.sort(key=_order)
        return found

    def services(self, namespace: str, now: float) -> list[ServiceSummary]:
        """From the namespace's index: two round trips, whatever else the database holds."""
        if not self._upgraded:
            self.upgrade()
        with self._translated_failures():
            names = self._services(keys=[_index_key(self.prefix, namespace)], args=[_score(now)])
            pipe = self.client.pipeline(transaction=False)
            services = [_unquoted(name.decode("ascii")) for name in names]
            for service_name in services:
                self._lookup(
                    keys=self._keys(namespace, service_name)[:2], args=[_score(now)], client=pipe
                )
            answers = pipe.execute() if services else []
        summaries = []
        for service_name, records in zip(services, answers):
            live = _instances(namespace, service_name, records)
            if live:
                up = sum(1 for i in live if i.effective_status == UP)
                summaries.append(ServiceSummary(service_name, len(live), up))
        summaries.sort()
        return summaries

    def change_index(self, namespace: str, service_name: str | None) -> int:
        """One read: the namespace's sequence, or the service's entry of its indexes."""
        self._start_watching()
        sequence, indexes = _change_keys(self.prefix, namespace)[:2]
        with self._translated_failures():
            if service_name is None:
                found: Any = self.client.get(sequence)
            else:
                found = self.client.hget(indexes, _quoted(service_name))
        return int(found) if found is not None else FIRST_INDEX

    def changes_since(self, namespace: str, index: int) -> list[Change]:
        """One transaction: the sequence, the highest number trimmed, the log above ``index``."""
        self._start_watching()
        sequence, _, log_key, _ = _change_keys(self.prefix, namespace)
        with self._translated_failures():
            pipe = self.client.pipeline(transaction=True)
            pipe.get(sequence)
            pipe.get(f"{sequence}:dropped")
            pipe.zrangebyscore(log_key, f"({index}", "+inf")
            latest_text, dropped_text, entries = pipe.execute()
        latest = int(latest_text) if latest_text is not None else FIRST_INDEX
        dropped = int(dropped_text) if dropped_text is not None else 0
        if index < dropped or index > latest:
            raise IndexTooOld(
                f"index {index} is older than the change log of namespace {namespace!r} "
                f"keeps (or newer than its latest, {latest}): read everything"
            )
        changes = []
        for entry in entries:
            number, kind, _, service, record = entry.split(b"\n", 4)
            instance = _parsed(namespace, _unquoted(service.decode("ascii")), record)
            if instance is not None:
                changes.append(Change(int(number), kind.decode("ascii"), instance))
        return changes

    def _start_watching(self) -> None:
        if self._watching.here() is None and not self._closed:
            self._watching.get(self._make_watching)

    def _make_watching(self) -> tuple[BackgroundThread, Sweeper]:
        subscriber = BackgroundThread(lambda: self._subscribe(subscriber), "keyard-redis-watch")
        sweeper = Sweeper(self._sweep, "keyard-redis-sweeper")
        subscriber.start()
        sweeper.start()
        return subscriber, sweeper

    def _subscribe(self, thread: BackgroundThread) -> None:
        """Wake the waiters at every change of every process (and when Redis fails)."""
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":{*}:sequence"
        backoff = Backoff(0.1, 2.0)
        while not thread.stopping.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(pattern)
                self.waiters.notify()  # what changed while not subscribed
                while not thread.stopping.is_set():
                    if pubsub.get_message(timeout=0.5) is not None:
                        self.waiters.notify()
                    backoff.reset()
            except redis.exceptions.RedisError as exc:
                pause = backoff.next()
                if backoff.failures == 1:
                    log.warning("%s: watching for changes failed: %s", self.where, exc)
                self.waiters.notify()  # the waiters read again, and see the failure
                thread.wait(pause)
            finally:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    pubsub.close()

    def _sweep(self) -> None:
        """Purge the services with an instance past its expiry (each expiry a change)."""
        now = time.time()
        with self._translated_failures():
            due: Any = self.client.zrangebyscore(
                _expiring_key(self.prefix), "-inf", _score(now), start=0, num=100
            )
        for tag in due:
            quoted_namespace, _, quoted_service = tag.decode("ascii").partition("/")
            namespace = _unquoted(quoted_namespace)
            self._write(
                self._sweep_service, namespace, _unquoted(quoted_service),
                [_score(now), PURGE_BATCH, KEY_GRACE_MS], lambda reply: None,
            )

    def close(self) -> None:
        """Stop the cache's thread, if any, and close the connections to Redis."""
        self._closed = True
        watching = self._watching.pop()
        if watching is not None:
            watching[0].stop(wait=2.0)
            watching[1].stop()
        cache = self._cache.pop()
        if cache is not None:
            cache.stop()
        self.client.close()
        self.client.connection_pool.disconnect()

    # -- the upgrade from keyard 0.2.0 ---------------------------------------------

    def upgrade(self) -> int:
        """Convert every service keyard 0.2.0 wrote under the prefix; how many instances.

        Idempotent and safe with several processes at once: each service is converted
        by one script that checks the old keys are as read, keeps a live record of the
        new layout, and deletes the old keys, so a second converter finds nothing.
        Expired 0.2.0 instances are dropped. Raises StoreUnavailable (and is tried
        again by the next call) when Redis cannot be reached.
        """
        with self._upgrade_lock:
            if self._upgraded:
                return 0
            glob, exact = _old_keys_pattern(self.prefix)
            converted = 0
            with self._translated_failures():
                for key in self.client.scan_iter(match=glob, count=1000):
                    found = exact.fullmatch(key.decode("utf-8", "surrogateescape"))
                    if found is not None:
                        converted += self._upgrade_service(key, found[1])
            self._upgraded = True
            return converted

    def _upgrade_service(self, old_key: bytes, old_tag: str) -> int:
        service_name = _unquoted(old_tag)
        namespace = DEFAULT_NAMESPACE
        ttl_key = old_key[: -len(b"expiry")] + b"ttl"
        keys: list[str | bytes] = [
            *self._keys(namespace, service_name), old_key, ttl_key,
            *_change_keys(self.prefix, namespace),
        ]
        tag = _tag(namespace, service_name)
        for _ in range(UPGRADE_ATTEMPTS):
            scores: Any = self.client.zrange(old_key, 0, -1, withscores=True)
            ttls: Any = self.client.hgetall(ttl_key)
            args: list[Any] = [
                self.channel, "", tag, _quoted(service_name), _score(time.time()), KEY_GRACE_MS,
                len(scores),
            ]
            for member, expires_at in scores:
                ttl = ttls.get(member, b"")
                key = _old_member(member)
                record, new_member = "", ""
                if key is not None and ttl.isdigit():
                    instance = from_keyard_0_2(service_name, *key, int(ttl), expires_at)
                    record, new_member = record_text(instance), _member(instance.instance_id)
                args += [member, _score(expires_at), ttl, new_member, record]
            result = int(self._upgrade(keys=keys, args=args))
            if result >= 0:
                return result
        raise StoreUnavailable(
            f"{self.where}: keyard 0.2.0's keys {old_key!r} kept changing while being "
            f"converted; stop the keyard 0.2.0 processes that write to prefix {self.prefix!r}"
        )

    # -- the cache -------------------------------------------------------------------

    def _keys(self, namespace: str, service_name: str) -> list[str]:
        return _service_keys(self.prefix, namespace, service_name)

    def _cache_here(self) -> RedisCache | None:
        """This process's cache, started at its first lookup (never one inherited by fork)."""
        cache = self._cache.here()
        if cache is not None or self._closed:
            return cache
        return self._cache.get(self._start_cache)

    def _start_cache(self) -> RedisCache:
        cache = RedisCache(
            self.client,
            channel=self.channel,
            epoch_key=f"{self.prefix}:epoch",
            timeout=self.timeout,
            parse_record=parse_record,
        )
        cache.start()
        return cache

    def _write(
        self,
        script: Script,
        namespace: str,
        service_name: str,
        args: list[Any],
        change: Callable[[Any], Instance | Removal | None],
    ) -> Any:
        """Run a write script (it publishes its change); with a cache, apply it there at once.

        ``args`` start with the instance's member; ``change(reply)`` is what the cache
        applies: the record stored, :data:`REMOVED`, or None for nothing.
        """
        tag = _tag(namespace, service_name)
        keys = [*self._keys(namespace, service_name), *_change_keys(self.prefix, namespace)]
        index_member = tag.partition("/")[2]
        cache = self._cache.here()
        if cache is None:
            with self._translated_failures():
                return script(keys=keys, args=[self.channel, "", tag, index_member, *args])
        write_id, generation = cache.begin_write(tag.encode("ascii"), args[0].encode("ascii"))
        applied: Instance | Removal | None = None
        try:
            with self._translated_failures():
                reply = script(keys=keys, args=[self.channel, write_id, tag, index_member, *args])
            applied = change(reply)
        finally:
            cache.finish_write(write_id, generation, applied)
        return reply

    @contextlib.contextmanager
    def _translated_failures(self) -> Iterator[None]:
        try:
            yield
        except redis.exceptions.RedisError as exc:
            if _is_authentication_failure(exc):
                raise StoreUnavailable(self._authentication_message()) from exc
            if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                raise StoreUnavailable(f"{self.where} cannot be reached: {exc}") from exc
            if isinstance(exc, redis.exceptions.ResponseError):  # OOM, READONLY, MISCONF...
                raise StoreUnavailable(f"{self.where} refused the command: {exc}") from exc
            raise StoreUnavailable(  # e.g. not a Redis server at all
                f"{self.where} did not answer as a Redis server does: {type(exc).__name__}: {exc}"
            ) from exc

    def _authentication_message(self) -> str:
        if self._has_password:
            return (
                f"{self.where} refused the password keyard gave: check the redis store's "
                "password option or the password in its url"
            )
        return (
            f"{self.where} needs a password: set the redis store's password option "
            "(KEYARD_REDIS_PASSWORD) or put it in the url (redis://:PASSWORD@host:port/db)"
        )


def _stored(instance: Instance, reply: list[Any]) -> Instance:
    """The record the put script stored: ``instance`` if new, else the merged record."""
    if len(reply) == 1:
        return instance
    return parse_record(instance.namespace, instance.service_name, reply[1])


def _live(instances: list[Instance], version: str | None, now: float) -> list[Instance]:
    found = [
        i for i in instances if i.expires_at > now and (version is None or i.version == version)
    ]
    found.sort(key=_order)
    return found
