"""The ``auth`` section of keyard's configuration, checked: which modes, which keys.

::

    {"auth": {"mode": "jwt", "jwt_secret": "...32 bytes or more..."}}
    {"auth": {"mode": "jwt", "jwt_public_key": "/etc/keyard/issuer.pem"}}
    {"auth": {"mode": ["jwt", "trusted"], "jwt_secret": "..."}}

Environment variables ``KEYARD_AUTH_<OPTION>`` override each option
(``KEYARD_AUTH_MODE``, ``KEYARD_AUTH_JWT_SECRET`` ...). The key file is read and
parsed here, at start-up: a key that is missing, unreadable or not a public key
stops keyard with one message. A message never shows the secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyard.errors import ConfigError

#: The modes, in the order a chain must keep: jwt first, then one of the others.
MODES = ("none", "trusted", "jwt")
#: The options of the section.
OPTIONS = (
    "mode",
    "jwt_secret",
    "jwt_public_key",
    "jwt_algorithms",
    "jwt_namespace_claim",
    "jwt_require_exp",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
)
#: Options whose environment variable is taken as it is, never parsed as JSON
#: (a secret of digits stays a string).
RAW_TEXT_OPTIONS = frozenset(
    {"jwt_secret", "jwt_public_key", "jwt_namespace_claim", "jwt_audience", "jwt_issuer"}
)

#: HMAC algorithms and the fewest bytes a secret for each must have (RFC 7518 3.2).
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
#: Public-key algorithms by the kind of key that verifies them.
KEY_ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
#: The algorithms accepted with a key file when ``jwt_algorithms`` is not given
#: (those of them the key can verify).
DEFAULT_KEY_ALGORITHMS = ("RS256", "ES256")
DEFAULT_CLAIM = "namespace"


@dataclass(frozen=True)
class AuthSettings:
    """A checked ``auth`` section. ``modes`` is one mode, or a chain (``("jwt", "trusted")``)."""

    modes: tuple[str, ...] = ("none",)
    #: The HMAC secret (never shown: not in the repr).
    jwt_secret: str | None = field(default=None, repr=False)
    #: The path of the public key file, as given.
    jwt_public_key: str | None = None
    #: The parsed public key (a ``cryptography`` public key object).
    public_key: Any = field(default=None, repr=False, compare=False)
    #: The kind of the public key: RSA, EC or OKP (Ed25519/Ed448).
    key_kind: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_namespace_claim: str = DEFAULT_CLAIM
    jwt_require_exp: bool = False
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0

    @property
    def mode_text(self) -> str:
        """The mode as the configuration says it: ``jwt`` or ``jwt, trusted``."""
        return ", ".join(self.modes)


def parse(section: Mapping[str, Any], where: str) -> AuthSettings:
    """Check the ``auth`` section; ConfigError (prefixed with ``where``) naming the option."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: auth must be an object, got {type(section).__name__}")
    unknown = sorted(set(section) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown auth option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(OPTIONS)}"
        )
    modes = _modes(section.get("mode", "none"), where)
    values: dict[str, Any] = {"modes": modes}
    for name in ("jwt_namespace_claim", "jwt_audience", "jwt_issuer"):
        if name in section:
            values[name] = _text(section[name], name, where)
    if "jwt_require_exp" in section:
        value = section["jwt_require_exp"]
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: jwt_require_exp must be true or false, got {value!r}")
        values["jwt_require_exp"] = value
    if "jwt_leeway" in section:
        value = section["jwt_leeway"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 300:
            raise ConfigError(
                f"{where}: jwt_leeway must be seconds from 0 to 300 (clock skew allowed for "
                f"exp and nbf), got {value!r}"
            )
        values["jwt_leeway"] = float(value)
    secret, key_path = section.get("jwt_secret"), section.get("jwt_public_key")
    if "jwt" not in modes:
        given = [name for name in OPTIONS if name.startswith("jwt_") and name in section]
        if given:
            raise ConfigError(
                f"{where}: {', '.join(given)} given, but auth mode is {', '.join(modes)}; "
                'the jwt options take effect with "mode": "jwt"'
            )
        return AuthSettings(**values)
    if secret is not None and key_path is not None:
        raise ConfigError(
            f"{where}: give jwt_secret (HMAC) or jwt_public_key (a PEM file), not both"
        )
    if secret is None and key_path is None:
        raise ConfigError(
            f"{where}: auth mode jwt needs a key: jwt_secret (a shared secret, "
            "KEYARD_AUTH_JWT_SECRET) or jwt_public_key (the path of a PEM public key file, "
            "KEYARD_AUTH_JWT_PUBLIC_KEY); there is no built-in secret"
        )
    algorithms = _algorithms(section.get("jwt_algorithms"), where)
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}: jwt_secret must be a non-empty string")
        algorithms = algorithms or ("HS256",)
        for algorithm in algorithms:
            if algorithm not in HMAC_ALGORITHMS:
                raise ConfigError(
                    f"{where}: jwt_algorithms names {algorithm}, which needs a public key; with "
                    f"jwt_secret give HMAC algorithms only: {', '.join(HMAC_ALGORITHMS)}"
                )
        need = max(HMAC_ALGORITHMS[algorithm] for algorithm in algorithms)
        size = len(secret.encode("utf-8"))
        if size < need:
            raise ConfigError(
                f"{where}: jwt_secret is {size} bytes long; {', '.join(algorithms)} needs at "
                f"least {need} (RFC 7518 section 3.2), e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return AuthSettings(**values, jwt_secret=secret, jwt_algorithms=algorithms)
    path = _text(key_path, "jwt_public_key", where)
    public_key, kind = _read_public_key(path, where)
    fits = KEY_ALGORITHMS[kind]
    if not algorithms:
        algorithms = tuple(a for a in DEFAULT_KEY_ALGORITHMS if a in fits)
        if not algorithms:
            raise ConfigError(
                f"{where}: jwt_public_key {path!r} is an {kind} key; give jwt_algorithms "
                f"(one of {', '.join(fits)})"
            )
    for algorithm in algorithms:
        if algorithm not in fits:
            raise ConfigError(
                f"{where}: jwt_algorithms names {algorithm}, which the {kind} key in "
                f"{path!r} cannot verify; it verifies {', '.join(fits)}"
            )
    return AuthSettings(
        **values,
        jwt_public_key=path,
        public_key=public_key,
        key_kind=kind,
        jwt_algorithms=algorithms,
    )


def _modes(value: Any, where: str) -> tuple[str, ...]:
    """``"jwt"``, ``["jwt", "trusted"]`` or ``"jwt,trusted"`` as a checked tuple."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise ConfigError(
            f"{where}: auth mode must be one of {', '.join(MODES)}, or a list such as "
            f'["jwt", "trusted"], got {value!r}'
        )
    modes = tuple(mode.strip().lower() for mode in value)
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(
                f"{where}: auth mode {mode!r} is not known; valid: {', '.join(MODES)}"
            )
    if len(modes) == 1:
        return modes
    if len(modes) != 2 or modes[0] != "jwt" or modes[1] == "jwt":
        raise ConfigError(
            f"{where}: auth mode {list(modes)!r} cannot be chained; a chain is jwt then one "
            'other mode: ["jwt", "trusted"] or ["jwt", "none"] (a token that is not a JWT '
            "goes to the second; none and trusted accept whatever reaches them, so they come last)"
        )
    return modes


def _algorithms(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ConfigError(
            f'{where}: jwt_algorithms must be a non-empty list such as ["HS256"], got {value!r}'
        )
    known = [*HMAC_ALGORITHMS, *(a for group in KEY_ALGORITHMS.values() for a in group)]
    for algorithm in value:
        if algorithm.lower() == "none":
            raise ConfigError(f"{where}: jwt_algorithms must not name none: tokens are signed")
        if algorithm not in known:
            raise ConfigError(
                f"{where}: jwt_algorithms names {algorithm!r}, which is not known; "
                f"valid: {', '.join(known)}"
            )
    return tuple(dict.fromkeys(value))


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {name} must be a non-empty string, got {value!r}")
    return value


def _read_public_key(path: str, where: str) -> tuple[Any, str]:
    """The public key in the PEM file at ``path`` and its kind; ConfigError if it is none."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}: jwt_public_key {path!r} cannot be read: {exc.strerror or exc}"
        ) from exc
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        hint = " (it holds a private key: give the public one)" if b"PRIVATE KEY" in data else ""
        raise ConfigError(
            f"{where}: jwt_public_key {path!r} is not a PEM public key{hint}"
        ) from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "EC"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, "OKP"
    raise ConfigError(
        f"{where}: jwt_public_key {path!r} holds a {type(key).__name__}; "
        "give an RSA, EC or Ed25519 public key"
    )
