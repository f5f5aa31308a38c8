"""The Redis store (``store_type: "redis"``): a registry shared by keyards on many hosts.

Per service, two keys under the configured prefix:

- ``<prefix>:{<service>}:expiry``, a sorted set: member = the JSON text of
  ``[version, location]``, score = ``expires_at``;
- ``<prefix>:{<service>}:ttl``, a hash: same member -> ``ttl``.

``<service>`` is percent-encoded (so ``:``, ``{``, ``}`` and any unicode are safe)
and wrapped in a Redis Cluster hash tag, so both keys of a service share a slot.
Lookups read only the live range of the service's sorted set (O(instances of the
service)); writes are Lua scripts, atomic, that also purge the service's expired
members and set both keys to expire a minute after the service's last instance,
so an abandoned service disappears by itself. Each write script also publishes the
change it made on ``<prefix>:changes:db<n>``, for the stores whose ``cache`` option
answers lookups from a per-process copy (:mod:`keyard.stores.redis_mirror`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from keyard.errors import ConfigError, StoreUnavailable
from keyard.stores import options as opt
from keyard.stores.base import Instance, Store
from keyard.stores.redis_mirror import Mirror

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "keyard"
DEFAULT_TIMEOUT = 2.0
#: How long a service's keys outlive its last instance's expiry, in milliseconds.
KEY_GRACE_MS = 60_000
#: How many expired members one write purges at most.
PURGE_BATCH = 500

_OPTIONS = ("url", "host", "port", "db", "password", "prefix", "timeout", "cache")
_URL_SCHEMES = ("redis", "rediss", "unix")

# Both write scripts: KEYS[1] = the service's sorted set, KEYS[2] = its ttl hash.
_PURGE_LUA = """
local function purge(now, batch)
    local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
    if #expired > 0 then
        redis.call('ZREM', KEYS[1], unpack(expired))
        redis.call('HDEL', KEYS[2], unpack(expired))
    end
end
"""

# Store a member, keep both keys alive until a grace period after the last expiry, and
# publish the change (see keyard/stores/redis_mirror.py). ARGV[7], ARGV[8], ARGV[9]:
# the channel, the writer's id of the write (or ''), the service's tag.
_PUT_LUA = (
    _PURGE_LUA
    + """
local function put(member, expires_at, ttl, now, batch, grace)
    purge(now, batch)
    redis.call('ZADD', KEYS[1], expires_at, member)
    redis.call('HSET', KEYS[2], member, ttl)
    redis.call('PUBLISH', ARGV[7],
        ARGV[8] .. '\\nput\\n' .. ARGV[9] .. '\\n' .. member .. '\\n' .. expires_at .. '\\n' .. ttl)
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    local ms = math.ceil((tonumber(last[2]) - tonumber(now)) * 1000) + tonumber(grace)
    if ms < 1 then ms = 1 end
    redis.call('PEXPIRE', KEYS[1], ms)
    redis.call('PEXPIRE', KEYS[2], ms)
end
"""
)

# ARGV: member, expires_at, ttl, now, purge batch, grace (ms), channel, id, tag.
# Returns 1 if new.
_REGISTER_LUA = (
    _PUT_LUA
    + """
local now = tonumber(ARGV[4])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local created = (not old) or tonumber(old) <= now
put(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if created then return 1 end
return 0
"""
)

# The health check in one script (one round trip, atomic). ARGV as for register;
# a live member keeps its own ttl and expires that ttl after now. Returns
# {1 if new, the ttl stored}.
_REFRESH_LUA = (
    _PUT_LUA
    + """
local now = tonumber(ARGV[4])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local ttl = false
if old and tonumber(old) > now then ttl = redis.call('HGET', KEYS[2], ARGV[1]) end
if ttl then
    -- %.17g: the exact double, the same sum as the caller's now + ttl
    local expires_at = string.format('%.17g', now + tonumber(ttl))
    put(ARGV[1], expires_at, ttl, ARGV[4], ARGV[5], ARGV[6])
    return {0, ttl}
end
put(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return {1, ARGV[3]}
"""
)

# ARGV: member. Returns {expires_at, ttl} (strings), or nil for an unknown member.
_GET_LUA = """
local expires_at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires_at then return false end
return {expires_at, redis.call('HGET', KEYS[2], ARGV[1])}
"""

# ARGV: member, now, purge batch, channel, id, tag. Returns 1 if a live instance was
# removed. Publishes the removal even when there was nothing to remove (the writer
# waits for its id).
_DEREGISTER_LUA = (
    _PURGE_LUA
    + """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[2], ARGV[1])
end
purge(ARGV[2], tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\ndel\\n' .. ARGV[6] .. '\\n' .. ARGV[1])
if old and tonumber(old) > tonumber(ARGV[2]) then return 1 end
return 0
"""
)

# ARGV: now. Returns member, expires_at, ttl for each live member, flat, in one
# command (one round trip); scores stay strings, as Lua would round numbers.
_LOOKUP_LUA = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
local found = {}
for i = 1, #live, 2 do
    found[#found + 1] = live[i]
    found[#found + 1] = live[i + 1]
    found[#found + 1] = redis.call('HGET', KEYS[2], live[i])
end
return found
"""


# Reads a whole service for the cache, expired members included (the copy filters them
# at each lookup's time), and publishes the mark that orders the read among the
# changes. ARGV: channel, token, tag. Returns what _LOOKUP_LUA returns.
_LOAD_LUA = """
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local found = {}
for i = 1, #all, 2 do
    found[#found + 1] = all[i]
    found[#found + 1] = all[i + 1]
    found[#found + 1] = redis.call('HGET', KEYS[2], all[i])
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\nmark\\n' .. ARGV[3])
return found
"""


def _member(version: str, location: str) -> str:
    # ASCII-only JSON: any string, lone surrogates included, round-trips exactly.
    return json.dumps([version, location], ensure_ascii=True, separators=(",", ":"))


# What keyard writes for strings of printable ASCII other than '"' and '\\': read
# without a JSON parser (a tenth of the time). Anything else goes to json.loads.
_PLAIN_MEMBER = re.compile(
    rb'\["([\x20\x21\x23-\x5b\x5d-\x7e]*)","([\x20\x21\x23-\x5b\x5d-\x7e]*)"\]'
)


def _parse_member(member: bytes | str) -> tuple[str, str] | None:
    """The ``(version, location)`` a member names, or None when keyard did not write it."""
    if isinstance(member, bytes):
        plain = _PLAIN_MEMBER.fullmatch(member)
        if plain is not None:
            return plain[1].decode("ascii"), plain[2].decode("ascii")
    try:
        key = json.loads(member)
    except (ValueError, RecursionError):
        return None
    if isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return key[0], key[1]
    return None


def _score(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same double


def _refreshed(instance: Instance, reply: list[Any]) -> tuple[Instance, bool]:
    """The instance as the refresh script stored it, and whether it is new."""
    created, ttl = reply
    if created:
        return instance, True
    ttl = int(ttl)
    now = instance.expires_at - instance.ttl
    return instance._replace(ttl=ttl, expires_at=now + ttl), False


def _forget_mirror_after_fork(store: RedisStore) -> None:
    """In a forked child, drop the parent's copy and lock (its thread did not survive)."""
    ref = weakref.ref(store)

    def forget() -> None:
        child = ref()
        if child is not None:
            child._mirror = None
            child._mirror_lock = threading.Lock()

    os.register_at_fork(after_in_child=forget)


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


@functools.lru_cache(maxsize=4096)
def _tag(service_name: str) -> str:
    """The service's name percent-encoded (cached: quote() is slow)."""
    return urllib.parse.quote(service_name, safe="", errors="surrogatepass")


@functools.lru_cache(maxsize=4096)
def _service_keys(prefix: str, service_name: str) -> list[str]:
    """The sorted set's and the hash's key (cached; callers never mutate the list)."""
    base = f"{prefix}:{{{_tag(service_name)}}}"
    return [f"{base}:expiry", f"{base}:ttl"]


def _live(instances: list[Instance], version: str | None, now: float) -> list[Instance]:
    return [
        i for i in instances if i.expires_at > now and (version is None or i.version == version)
    ]


class RedisStore(Store):
    """Instances in Redis: a sorted set by expiry and a hash of TTLs per service."""

    name = "redis"

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        where: str = "redis",
        cache: bool = False,
    ) -> None:
        """Use ``client`` (which should have socket timeouts and no retries, as
        :meth:`from_options` builds it) with keys under ``prefix``. ``where`` names
        the server in error messages (no password). With ``cache``, lookups are
        answered from a per-process copy (:mod:`keyard.stores.redis_mirror`)."""
        self.client = client
        self.prefix = prefix
        self.where = where
        self.cache = cache
        kwargs = client.connection_pool.connection_kwargs
        self.timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)
        #: Where every write publishes its change: channels are shared by all databases.
        self.channel = f"{prefix}:changes:db{kwargs.get('db', 0)}"
        self._mirror: Mirror | None = None
        self._mirror_lock = threading.Lock()
        self._closed = False
        if cache:
            _forget_mirror_after_fork(self)
        self._load = client.register_script(_LOAD_LUA)
        self._register = client.register_script(_REGISTER_LUA)
        self._refresh = client.register_script(_REFRESH_LUA)
        self._get = client.register_script(_GET_LUA)
        self._deregister = client.register_script(_DEREGISTER_LUA)
        self._lookup = client.register_script(_LOOKUP_LUA)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisStore:
        """Options: ``url``, or ``host``/``port``/``db``/``password``; ``prefix``;
        ``timeout``; ``cache``."""
        opt.reject_unknown("redis", options, _OPTIONS)
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

    # -- keys ------------------------------------------------------------------

    def _keys(self, service_name: str) -> list[str]:
        return _service_keys(self.prefix, service_name)

    # -- the Store interface ---------------------------------------------------

    def register(self, instance: Instance) -> bool:
        now = instance.expires_at - instance.ttl
        created = self._write(
            self._register,
            instance.service_name,
            _member(instance.version, instance.location),
            [_score(instance.expires_at), instance.ttl, _score(now), PURGE_BATCH, KEY_GRACE_MS],
            lambda reply: instance,
        )
        return bool(created)

    def refresh(self, instance: Instance) -> tuple[Instance, bool]:
        """Atomic: one script, one round trip."""
        now = instance.expires_at - instance.ttl
        reply = self._write(
            self._refresh,
            instance.service_name,
            _member(instance.version, instance.location),
            [_score(instance.expires_at), instance.ttl, _score(now), PURGE_BATCH, KEY_GRACE_MS],
            lambda reply: _refreshed(instance, reply)[0],
        )
        return _refreshed(instance, reply)

    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        with self._translated_failures():
            found = self._get(keys=self._keys(service_name), args=[_member(version, location)])
        if found is None or found[1] is None or float(found[0]) <= now:
            return None
        return Instance(service_name, version, location, int(found[1]), float(found[0]))

    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        removed = self._write(
            self._deregister,
            service_name,
            _member(version, location),
            [_score(now), PURGE_BATCH],
            lambda reply: (version, location),
        )
        return bool(removed)

    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        """With ``cache``, from this process's copy while it is current (see redis_mirror)."""
        mirror = self._mirror_here() if self.cache else None
        if mirror is not None:
            found = mirror.lookup(service_name, version, now)
            if found is not None:
                return found
            tag = _tag(service_name)
            token = mirror.begin_load(service_name, tag.encode("ascii"))
            if token is not None:
                instances = None
                try:
                    with self._translated_failures():
                        flat = self._load(
                            keys=self._keys(service_name), args=[self.channel, token, tag]
                        )
                    instances = self._instances(service_name, None, flat)
                finally:
                    mirror.finish_load(token, instances)
                return _live(instances, version, now)
        with self._translated_failures():
            flat = self._lookup(keys=self._keys(service_name), args=[_score(now)])
        return self._instances(service_name, version, flat)

    @staticmethod
    def _instances(service_name: str, version: str | None, flat: list[Any]) -> list[Instance]:
        """The instances of a lookup script's answer (of ``version``, if given), in order."""
        found = []
        rows = iter(flat)
        for member, expires_at, ttl in zip(rows, rows, rows):
            if ttl is None:
                continue  # cannot happen: both keys change together, in one script
            key = _parse_member(member)
            if key is None:
                continue  # not a member keyard wrote: another program's data
            if version is None or key[0] == version:
                found.append(Instance(service_name, key[0], key[1], int(ttl), float(expires_at)))
        # Tuples: the same service_name, then (version, location), which is unique.
        found.sort()
        return found

    def close(self) -> None:
        """Stop the cache's thread, if any, and close the connections to Redis."""
        self._closed = True
        mirror = self._mirror
        if mirror is not None and mirror.pid == os.getpid():
            mirror.stop()
        self._mirror = None
        self.client.close()
        self.client.connection_pool.disconnect()

    # -- the cache -------------------------------------------------------------------

    def _mirror_here(self) -> Mirror | None:
        """This process's copy, started at its first lookup (never one inherited by fork)."""
        mirror = self._mirror
        if mirror is not None and mirror.pid == os.getpid():
            return mirror
        if self._closed:
            return None
        with self._mirror_lock:
            mirror = self._mirror
            if mirror is None or mirror.pid != os.getpid():
                mirror = Mirror(
                    self.client,
                    channel=self.channel,
                    epoch_key=f"{self.prefix}:epoch",
                    timeout=self.timeout,
                    parse_member=_parse_member,
                )
                mirror.start()
                self._mirror = mirror
        return mirror

    def _write(
        self,
        script: Script,
        service_name: str,
        member: str,
        args: list[Any],
        change: Callable[[Any], Instance | tuple[str, str]],
    ) -> Any:
        """Run a write script (it publishes its change); with a copy, apply it there at once."""
        tag = _tag(service_name)
        keys = self._keys(service_name)
        mirror = self._mirror
        if mirror is None or mirror.pid != os.getpid():
            with self._translated_failures():
                return script(keys=keys, args=[member, *args, self.channel, "", tag])
        write_id, generation = mirror.begin_write(tag.encode("ascii"), member.encode("ascii"))
        applied: Instance | tuple[str, str] | None = None
        try:
            with self._translated_failures():
                reply = script(keys=keys, args=[member, *args, self.channel, write_id, tag])
            applied = change(reply)
        finally:
            mirror.finish_write(write_id, generation, applied)
        return reply

    @contextlib.contextmanager
    def _translated_failures(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"{self.where} cannot be reached: {exc}") from exc
        except redis.exceptions.ResponseError as exc:  # NOAUTH, OOM, READONLY, MISCONF...
            raise StoreUnavailable(f"{self.where} refused the command: {exc}") from exc
        except redis.exceptions.RedisError as exc:  # e.g. not a Redis server at all
            raise StoreUnavailable(
                f"{self.where} did not answer as a Redis server does: {type(exc).__name__}: {exc}"
            ) from exc
