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
so an abandoned service disappears by itself.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from keyard.errors import ConfigError, StoreUnavailable
from keyard.stores import options as opt
from keyard.stores.base import Instance, Store

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 6379
DEFAULT_PREFIX = "keyard"
DEFAULT_TIMEOUT = 2.0
#: How long a service's keys outlive its last instance's expiry, in milliseconds.
KEY_GRACE_MS = 60_000
#: How many expired members one write purges at most.
PURGE_BATCH = 500

_OPTIONS = ("url", "host", "port", "db", "password", "prefix", "timeout")
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

# ARGV: member, expires_at, ttl, now, purge batch, grace (ms). Returns 1 if new.
_REGISTER_LUA = (
    _PURGE_LUA
    + """
local now = tonumber(ARGV[4])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local created = (not old) or tonumber(old) <= now
purge(ARGV[4], tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ms = math.ceil((tonumber(last[2]) - now) * 1000) + tonumber(ARGV[6])
if ms < 1 then ms = 1 end
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
if created then return 1 end
return 0
"""
)

# ARGV: member, now, purge batch. Returns 1 if a live instance was removed.
_DEREGISTER_LUA = (
    _PURGE_LUA
    + """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[2], ARGV[1])
end
purge(ARGV[2], tonumber(ARGV[3]))
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


def _member(version: str, location: str) -> str:
    # ASCII-only JSON: any string, lone surrogates included, round-trips exactly.
    return json.dumps([version, location], ensure_ascii=True, separators=(",", ":"))


def _parse_member(member: bytes | str) -> tuple[str, str] | None:
    """The ``(version, location)`` a member names, or None when keyard did not write it."""
    try:
        key = json.loads(member)
    except (ValueError, RecursionError):
        return None
    if isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return key[0], key[1]
    return None


def _score(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same double


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


class RedisStore(Store):
    """Instances in Redis: a sorted set by expiry and a hash of TTLs per service."""

    name = "redis"

    def __init__(
        self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX, where: str = "redis"
    ) -> None:
        """Use ``client`` (which should have socket timeouts and no retries, as
        :meth:`from_options` builds it) with keys under ``prefix``. ``where`` names
        the server in error messages (no password)."""
        self.client = client
        self.prefix = prefix
        self.where = where
        self._register = client.register_script(_REGISTER_LUA)
        self._deregister = client.register_script(_DEREGISTER_LUA)
        self._lookup = client.register_script(_LOOKUP_LUA)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedisStore:
        """Options: ``url``, or ``host``/``port``/``db``/``password``; ``prefix``; ``timeout``."""
        opt.reject_unknown("redis", options, _OPTIONS)
        prefix = opt.text("redis", "prefix", options.get("prefix", DEFAULT_PREFIX))
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
            return cls(client, prefix=prefix, where=shown)
        host = opt.text("redis", "host", options.get("host", DEFAULT_HOST))
        port = opt.whole_number(
            "redis", "port", options.get("port", DEFAULT_PORT), minimum=1, maximum=65535
        )
        db = opt.whole_number("redis", "db", options.get("db", 0), minimum=0, maximum=2**31 - 1)
        password = options.get("password")
        if password is not None:
            password = opt.text("redis", "password", password)
        client = redis.Redis(host=host, port=port, db=db, password=password, **common)
        return cls(client, prefix=prefix, where=f"redis at {host}:{port} db {db}")

    # -- keys ------------------------------------------------------------------

    def _keys(self, service_name: str) -> list[str]:
        tag = urllib.parse.quote(service_name, safe="", errors="surrogatepass")
        base = f"{self.prefix}:{{{tag}}}"
        return [f"{base}:expiry", f"{base}:ttl"]

    # -- the Store interface ---------------------------------------------------

    def register(self, instance: Instance) -> bool:
        now = instance.expires_at - instance.ttl
        member = _member(instance.version, instance.location)
        with self._translated_failures():
            created = self._register(
                keys=self._keys(instance.service_name),
                args=[
                    member,
                    _score(instance.expires_at),
                    instance.ttl,
                    _score(now),
                    PURGE_BATCH,
                    KEY_GRACE_MS,
                ],
            )
        return bool(created)

    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        expiry_key, ttl_key = self._keys(service_name)
        member = _member(version, location)
        with self._translated_failures():
            pipe = self.client.pipeline(transaction=True)
            pipe.zscore(expiry_key, member)
            pipe.hget(ttl_key, member)
            expires_at, ttl = pipe.execute()
        if expires_at is None or ttl is None or expires_at <= now:
            return None
        return Instance(service_name, version, location, int(ttl), float(expires_at))

    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        with self._translated_failures():
            removed = self._deregister(
                keys=self._keys(service_name),
                args=[_member(version, location), _score(now), PURGE_BATCH],
            )
        return bool(removed)

    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        with self._translated_failures():
            flat = self._lookup(keys=self._keys(service_name), args=[_score(now)])
        found = []
        for n in range(0, len(flat), 3):
            member, expires_at, ttl = flat[n : n + 3]
            if ttl is None:
                continue  # cannot happen: both keys change together, in one script
            key = _parse_member(member)
            if key is None:
                continue  # not a member keyard wrote: another program's data
            member_version, location = key
            if version is None or member_version == version:
                found.append(
                    Instance(service_name, member_version, location, int(ttl), float(expires_at))
                )
        found.sort(key=lambda i: (i.version, i.location))
        return found

    def close(self) -> None:
        """Close the connections to Redis."""
        self.client.close()
        self.client.connection_pool.disconnect()

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
