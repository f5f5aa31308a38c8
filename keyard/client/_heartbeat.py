"""Keeping an instance registered from a background thread."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from types import TracebackType

from keyard.client._client import KeyardClient
from keyard.client._exceptions import KeyardError, NotFound
from keyard.client._models import InstanceSpec, Registration

log = logging.getLogger("keyard.client")

#: The TTL assumed until the registry has told the real one (the server's default).
ASSUMED_TTL = 30
#: The first retry after a failed health check comes this soon (or after half the interval).
FIRST_RETRY = 0.5


class Heartbeat:
    """Keeps one instance alive in the registry until stopped.

    :meth:`start` registers the instance and starts a daemon thread that sends a
    health check (PUT) every ``interval`` seconds, a little earlier at random
    (``jitter``, a fraction of the interval) so that many instances started
    together do not beat in step. ``interval`` defaults to a third of the TTL,
    so two health checks may fail before the instance expires.

    When the registry is down or answers an error, the thread retries sooner
    (from half a second, doubling up to ``interval``) and logs a warning on the
    ``keyard.client`` logger; a registry that restarted empty learns the
    instance again from the next health check (the registry registers an
    unknown instance on PUT). :meth:`stop` ends the thread at once (it waits on
    an event, not in a sleep) and deregisters the instance.

    Use it as a context manager::

        with Heartbeat(client, "app2", "http://127.0.0.1:8002", ttl=10):
            serve_forever()
    """

    def __init__(
        self,
        client: KeyardClient,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
        spec: InstanceSpec | None = None,
        interval: float | None = None,
        jitter: float = 0.2,
        deregister: bool = True,
        strict_interval: bool = False,
    ) -> None:
        """``ttl`` (seconds) and ``spec`` (the instance's id, status, tags, metadata,
        weight) are sent with every registration and health check, so that a
        registry that restarted empty learns them again; without ``ttl`` the
        registry's default TTL applies. ``deregister=False`` leaves the instance
        to expire by itself after :meth:`stop`. An ``interval`` not shorter than
        the TTL the registry answers (its default TTL when no ``ttl`` is given)
        is logged as a warning, or with ``strict_interval=True`` refused by
        :meth:`start` (see there).

        Raises ValueError when ``interval`` is not shorter than ``ttl``, or
        ``jitter`` is not in ``[0, 1)``.
        """
        if interval is not None and not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if interval is not None and ttl is not None and interval >= ttl:
            raise ValueError(
                f"interval ({interval:g} s) must be shorter than the ttl ({ttl} s), "
                "or the instance expires between health checks"
            )
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")
        self.client = client
        self.service_name = service_name
        self.location = location
        self.version = version
        self.ttl = ttl
        self.spec = spec
        self.jitter = jitter
        self.deregister = deregister
        self.strict_interval = strict_interval
        self._interval = interval
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._gone: bool | None = None  # the result of stop(), once stopped
        #: The registry's last successful answer, or ``None`` before the first one.
        self.registration: Registration | None = None
        #: The last error met (registering, health-checking or deregistering), if any.
        self.last_error: KeyardError | None = None
        #: How many registrations and health checks the registry accepted.
        self.beats = 0

    def __repr__(self) -> str:
        return (
            f"<Heartbeat {self.service_name!r} {self.version or 'default version'} "
            f"at {self.location!r} every {self.interval:g} s>"
        )

    @property
    def interval(self) -> float:
        """Seconds between health checks: as given, else a third of the TTL."""
        if self._interval is not None:
            return self._interval
        if self.registration is not None:
            return self.registration.ttl / 3
        return (self.ttl or ASSUMED_TTL) / 3

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, block: bool = True) -> Heartbeat:
        """Register the instance and start the background thread; returns ``self``.

        With ``block=True`` the first registration happens here and its errors
        raise (the thread is then not started); with ``strict_interval=True``,
        so does ValueError when the ``interval`` given is not shorter than the
        TTL the registry answered (its default TTL when no ``ttl`` was given):
        the instance is then deregistered again. With ``block=False`` the thread
        registers, retrying until the registry answers: use it for an app that
        may start before its registry.
        """
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError(f"{self!r} was already started (a Heartbeat runs once)")
        if block:
            self._beat(self.client.register)
            too_long = self._interval_too_long()
            if too_long and self.strict_interval:
                self._stop.set()
                with self._stop_lock:
                    self._gone = self._deregister()
                raise ValueError(too_long)
            if too_long:
                log.warning("%s", too_long)
        self._thread = threading.Thread(
            target=self._run,
            args=(not block,),
            name=f"keyard-heartbeat-{self.service_name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread, then deregister the instance (unless ``deregister=False``).

        Waits at most ``timeout`` seconds for a health check in flight (default:
        the client's timeout and a second). Returns ``True`` when the instance
        is known to be gone from the registry (or was never registered),
        ``False`` when deregistering failed (see :attr:`last_error`; the
        instance then expires after its TTL). Never raises; calling it again
        returns the first answer.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.client.timeout + 1 if timeout is None else timeout)
        with self._stop_lock:
            if self._gone is None:
                self._gone = self._deregister()
            return self._gone

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _deregister(self) -> bool:
        if not self.deregister or (self._thread is None and self.registration is None):
            return True
        try:
            instance_id = self._instance_id()
            if instance_id is None:
                self.client.deregister(self.service_name, self.location, version=self.version)
            else:
                self.client.deregister_instance(self.service_name, instance_id)
        except NotFound:
            return True  # expired already, or the registry restarted: gone either way
        except KeyardError as exc:
            self.last_error = exc
            log.warning("could not deregister %s at %s: %s", self.service_name, self.location, exc)
            return False
        log.info("deregistered %s at %s", self.service_name, self.location)
        return True

    def _interval_too_long(self) -> str | None:
        """Why the given interval lets the instance expire between health checks, if it does.

        Known once the registry has answered the TTL (its default, when none was given).
        """
        if self._interval is None or self.registration is None:
            return None
        if self._interval < self.registration.ttl:
            return None
        return (
            f"interval ({self._interval:g} s) must be shorter than the ttl the registry "
            f"answered ({self.registration.ttl} s), or the instance expires between health checks"
        )

    def _instance_id(self) -> str | None:
        """This instance's id when known (given, or answered), to deregister it alone."""
        if self.spec is not None and self.spec.instance_id is not None:
            return self.spec.instance_id
        record = self.registration.record if self.registration is not None else None
        return record.instance_id if record is not None else None

    def _beat(self, send: Callable[..., Registration]) -> None:
        registration = send(
            self.service_name, self.location, version=self.version, ttl=self.ttl, spec=self.spec
        )
        first = self.registration is None
        self.registration = registration
        self.beats += 1
        if first:
            log.info(
                "registered %s %s at %s, ttl %d s",
                registration.service_name,
                registration.version,
                registration.location,
                registration.ttl,
            )
            too_long = self._interval_too_long()
            if too_long and threading.current_thread() is self._thread:
                log.warning("%s", too_long)  # start(block=True) warns (or raises) itself
        elif registration.created:
            log.info(
                "the registry had lost %s at %s: registered again",
                self.service_name,
                self.location,
            )

    def _next_delay(self) -> float:
        return self.interval * (1 - self.jitter * random.random())

    def _run(self, register_first: bool) -> None:
        failures = 0
        delay = 0.0 if register_first else self._next_delay()
        while not self._stop.wait(delay):
            send = self.client.register if self.registration is None else self.client.heartbeat
            try:
                self._beat(send)
            except Exception as exc:  # the thread must outlive any one failure
                failures += 1
                if isinstance(exc, KeyardError):
                    self.last_error = exc
                    log.warning(
                        "health check of %s at %s failed (%d in a row): %s",
                        self.service_name,
                        self.location,
                        failures,
                        exc,
                    )
                else:
                    log.exception("health check of %s failed unexpectedly", self.service_name)
                first_retry = min(FIRST_RETRY, self.interval / 2)
                delay = min(self.interval, first_retry * 2 ** min(failures - 1, 20))
            else:
                if failures:
                    log.info("health checks of %s work again", self.service_name)
                failures = 0
                delay = self._next_delay()
