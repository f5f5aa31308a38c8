"""Mode ``jwt``: the namespace is a string claim of a signed JWT (verified with PyJWT).

The key is the ``auth`` section's shared secret (HMAC) or public key; only the
configured algorithms are accepted, so ``alg: none`` and an algorithm swap (a
token signed with HS256 by a public key) are refused. ``exp`` and ``nbf`` are
checked when present (``jwt_require_exp`` makes ``exp`` required), ``aud`` and
``iss`` when configured. Every refusal says why and never repeats the token.
"""

from __future__ import annotations

from typing import Any

import jwt

from keyard.auth import NotThisKind, Principal, checked_namespace
from keyard.auth.settings import HMAC_ALGORITHMS, KEY_ALGORITHMS, AuthSettings
from keyard.errors import Unauthorized

_KNOWN_ALGORITHMS = frozenset(
    [*HMAC_ALGORITHMS, *(a for group in KEY_ALGORITHMS.values() for a in group)]
)


def _json_type(value: Any) -> str:
    """What a JSON value is, in words (never the value: it comes from the token)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string"


class JwtBearer:
    """Reads the namespace from a verified JWT's claim."""

    mode = "jwt"

    def __init__(self, settings: AuthSettings) -> None:
        self.key: Any = settings.jwt_secret if settings.jwt_secret else settings.public_key
        self.algorithms = list(settings.jwt_algorithms)
        self.claim = settings.jwt_namespace_claim
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway
        required = ["exp"] if settings.jwt_require_exp else []
        self.options: dict[str, Any] = {
            "require": required,
        }

    def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise NotThisKind(
                f"a bearer token is required (auth mode jwt): a signed JWT whose "
                f"{self.claim!r} claim names your namespace"
            )
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise NotThisKind(
                "the bearer token is not a JWT (three base64url parts: header.payload.signature)"
            ) from exc
        algorithm = header.get("alg")
        accepted = ", ".join(self.algorithms)
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise Unauthorized(
                f"the token is not signed (alg none or missing); it must be signed with {accepted}"
            )
        if algorithm not in self.algorithms:
            shown = algorithm if algorithm in _KNOWN_ALGORITHMS else "an unknown algorithm"
            raise Unauthorized(
                f"the token is signed with {shown}, which this registry does not accept; "
                f"accepted: {accepted}"
            )
        claims = self._verified(token, algorithm)
        value = claims.get(self.claim)
        if self.claim not in claims:
            raise Unauthorized(f"the token has no {self.claim!r} claim; it names your namespace")
        if not isinstance(value, str):
            raise Unauthorized(
                f"the token's {self.claim!r} claim must be a string, got {_json_type(value)}"
            )
        return Principal(checked_namespace(value, f"the token's {self.claim!r} claim"), self.mode)

    def _verified(self, token: str, algorithm: str) -> dict[str, Any]:
        """The token's claims once its signature and times are checked; Unauthorized if not."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                options=self.options,  # type: ignore[arg-type]
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired (its exp is past)") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("the token is not valid yet (its nbf is in the future)") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized(
                "the token's signature does not verify with the registry's key"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(
                f"the token has no {exc.claim} claim; this registry requires one"
            ) from exc
        except jwt.InvalidAudienceError as exc:
            if self.audience is None:
                raise Unauthorized(
                    "the token has an aud claim, but this registry expects none "
                    "(no jwt_audience is configured)"
                ) from exc
            raise Unauthorized(f"the token's aud is not {self.audience!r}") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(f"the token's iss is not {self.issuer!r}") from exc
        except jwt.InvalidIssuedAtError as exc:
            raise Unauthorized("the token's iat is not a number") from exc
        except jwt.InvalidKeyError as exc:
            raise Unauthorized(
                f"the token is signed with {algorithm}, which the registry's key cannot verify"
            ) from exc
        except jwt.DecodeError as exc:
            raise Unauthorized(
                "the token cannot be decoded: its payload is not a JSON object, or one of "
                "exp, nbf, iat is not a number"
            ) from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized(f"the token is not valid ({type(exc).__name__})") from exc
        if not isinstance(claims, dict):
            raise Unauthorized("the token's payload is not a JSON object")
        return claims
