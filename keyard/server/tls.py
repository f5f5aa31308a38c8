"""``keyard serve --certfile F --keyfile K``: HTTPS, checked before any server starts."""

from __future__ import annotations

import ssl
from typing import NamedTuple

from keyard.errors import ConfigError


class Tls(NamedTuple):
    """The certificate chain and its private key that ``keyard serve`` serves HTTPS with."""

    certfile: str
    keyfile: str


def check_tls(certfile: str | None, keyfile: str | None) -> Tls | None:
    """The TLS files when both are given (``None`` when neither is), loaded once to check
    them: ConfigError for one without the other, an unreadable file, or a key that is
    not the certificate's."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        given, missing = "--certfile", "--keyfile"
        if certfile is None:
            given, missing = missing, given
        raise ConfigError(f"{given} is given without {missing}: HTTPS needs both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS file {exc.filename!r} cannot be read: no such file") from exc
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"--certfile {certfile!r} with --keyfile {keyfile!r} cannot be used: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc} (PEM files: the "
            "certificate chain, and its unencrypted private key)"
        ) from exc
    return Tls(certfile, keyfile)
