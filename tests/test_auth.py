"""Authentication: each mode of the ``auth`` section, every refused token, and its config.

In process (webtest over the memory store). Every refusal is a 401 with a JSON body
that says why, never repeats the token, and a ``WWW-Authenticate: Bearer`` header.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import webtest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyard.app import create_app
from keyard.errors import ConfigError
from keyard.helpers import config
from keyard.stores.memory import MemoryStore

SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"
LOCATION = "http://10.0.0.7:9000"


def app_with(auth: dict[str, Any], **top: Any) -> webtest.TestApp:
    return webtest.TestApp(create_app({"auth": auth, **top}, store=MemoryStore()))


def bearer(token: str) -> dict[str, str]:
    """The header as a WSGI server hands it over: the UTF-8 bytes as latin-1 text."""
    return {"Authorization": ("Bearer " + token).encode().decode("latin-1")}


def register(api: webtest.TestApp, headers: dict[str, str], **fields: Any) -> Any:
    body = {"service_name": "payments", "location": LOCATION, **fields}
    return api.post_json("/keyard", body, headers=headers, expect_errors=True)


def lookup(api: webtest.TestApp, headers: dict[str, str] | None = None) -> Any:
    return api.get("/keyard?service_name=payments", headers=headers or {}, expect_errors=True)


def assert_refused(answer: Any, reason: str, token: str | None = None) -> None:
    """A 401 in JSON that names ``reason``, with the Bearer challenge, not echoing ``token``."""
    assert answer.status_int == 401, answer.body
    assert answer.headers["WWW-Authenticate"].startswith("Bearer"), answer.headers
    assert answer.content_type == "application/json"
    body = answer.json
    assert body["title"] == "Unauthorized"
    assert reason in body["description"], body["description"]
    if token:
        assert token not in answer.text
        for part in token.split("."):
            if len(part) > 8:
                assert part not in answer.text


# -- mode none (the default) -----------------------------------------------------------


def test_mode_none_serves_the_default_namespace_without_a_token_or_with_the_token_default(
) -> None:
    api = webtest.TestApp(create_app({}, store=MemoryStore()))
    assert register(api, {}).json["service_name"] == "payments"
    record = api.get("/keyard/services/payments").json["instances"][0]
    assert record["namespace"] == "default"
    assert lookup(api, bearer("default")).json == {"result": [LOCATION]}


@pytest.mark.parametrize("header", ["Bearer staging", "Basic dXNlcjpwYXNz", "Bearer"])
def test_mode_none_refuses_any_other_token_so_a_tenant_never_writes_into_default(
    header: str,
) -> None:
    api = webtest.TestApp(create_app({}, store=MemoryStore()))
    answer = api.post_json(
        "/keyard", {"service_name": "payments", "location": LOCATION},
        headers={"Authorization": header}, expect_errors=True,
    )  # fmt: skip
    assert answer.status_int == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.get("/keyard?service_name=payments").json == {"result": []}


# -- mode trusted ----------------------------------------------------------------------


def test_mode_trusted_takes_the_namespace_from_the_token_read_as_utf8() -> None:
    api = app_with({"mode": "trusted"})
    for namespace in ("staging", "équipe/β:1"):
        assert register(api, bearer(namespace), instance_id="a").status_int == 201
        records = api.get("/keyard/services/payments", headers=bearer(namespace)).json
        assert [r["namespace"] for r in records["instances"]] == [namespace]


def test_mode_trusted_refuses_no_token_an_empty_one_or_one_too_long() -> None:
    api = app_with({"mode": "trusted"})
    assert_refused(lookup(api), "a bearer token is required")
    assert_refused(lookup(api, {"Authorization": "Bearer "}), "empty")
    assert_refused(lookup(api, {"Authorization": "Bearer    "}), "empty")
    long = "n" * 129
    assert_refused(lookup(api, bearer(long)), "the limit is 128", long)
    assert lookup(api, bearer("n" * 128)).status_int == 200
    assert_refused(lookup(api, {"Authorization": "Token staging"}), "Bearer TOKEN")


def basic(user: str, password: str | None) -> dict[str, str]:
    pair = user if password is None else f"{user}:{password}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def test_basic_credentials_carry_the_token_as_password_or_as_a_lone_user_name() -> None:
    """For Eureka's and lyft's clients, which take credentials in their server URL."""
    api = app_with({"mode": "trusted"})
    assert register(api, basic("keyard", "staging"), instance_id="a").status_int == 201
    assert register(api, basic("équipe", ""), instance_id="b").status_int == 201
    staging = api.get("/keyard/services/payments", headers=bearer("staging")).json
    assert [r["instance_id"] for r in staging["instances"]] == ["a"]
    named = api.get("/keyard/services/payments", headers=basic("x", "équipe")).json
    assert [r["namespace"] for r in named["instances"]] == ["équipe"]

    jwt_api = app_with({"mode": "jwt", "jwt_secret": SECRET})
    token = jwt.encode({"namespace": "team-a"}, SECRET)
    assert register(jwt_api, basic("keyard", token)).status_int == 201
    records = jwt_api.get("/keyard/services/payments", headers=bearer(token)).json
    assert [r["namespace"] for r in records["instances"]] == ["team-a"]
    assert_refused(register(jwt_api, basic("keyard", "not-a-jwt")), "", "not-a-jwt")


@pytest.mark.parametrize(("header", "reason"), [
    ("Basic !!", "not base64"),
    ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), "not base64 of UTF-8"),
    ("Basic " + base64.b64encode(b"no-colon").decode(), "no ':'"),
    ("Basic " + base64.b64encode(b":").decode(), "empty"),
    ("Basic", "empty"),
    ("Digest abc", "another scheme"),
])  # fmt: skip
def test_bad_basic_credentials_are_a_401_naming_why(header: str, reason: str) -> None:
    api = app_with({"mode": "trusted"})
    assert_refused(lookup(api, {"Authorization": header}), reason)


def test_a_header_that_is_not_utf8_is_a_401_not_a_500() -> None:
    api = app_with({"mode": "trusted"})
    answer = api.get(
        "/keyard?service_name=x", headers={"Authorization": "Bearer \xff\xfe"},
        expect_errors=True,
    )  # fmt: skip
    assert_refused(answer, "not valid UTF-8")


# -- mode jwt --------------------------------------------------------------------------


def hs256(claims: dict[str, Any], secret: str = SECRET, **kwargs: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kwargs)


@pytest.fixture
def jwt_api() -> webtest.TestApp:
    return app_with({"mode": "jwt", "jwt_secret": SECRET})


def test_mode_jwt_takes_the_namespace_from_the_namespace_claim(jwt_api: webtest.TestApp) -> None:
    now = int(time.time())
    token = hs256({"namespace": "team-a", "exp": now + 60, "nbf": now - 5, "sub": "ci"})
    assert register(jwt_api, bearer(token)).status_int == 201
    other = hs256({"namespace": "team-b"})
    assert lookup(jwt_api, bearer(token)).json == {"result": [LOCATION]}
    assert lookup(jwt_api, bearer(other)).json == {"result": []}
    record = jwt_api.get("/keyard/services/payments", headers=bearer(token)).json["instances"][0]
    assert record["namespace"] == "team-a"


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


BAD_TOKENS = {
    "alg none": (lambda: _unsigned({"namespace": "team-a"}), "not signed"),
    "alg None": (
        lambda: jwt.encode({"namespace": "team-a"}, None, algorithm="none"),
        "not signed",
    ),
    "an algorithm outside the list": (
        lambda: jwt.encode({"namespace": "team-a"}, SECRET + SECRET, algorithm="HS512"),
        "HS512, which this registry does not accept; accepted: HS256",
    ),
    "a bad signature": (
        lambda: hs256({"namespace": "team-a"}, secret="another-secret-of-32-bytes-or-more!!"),
        "signature does not verify",
    ),
    "a tampered payload": (
        lambda: _tampered(hs256({"namespace": "team-a"})),
        "signature does not verify",
    ),
    "an expired token": (
        lambda: hs256({"namespace": "team-a", "exp": int(time.time()) - 10}),
        "expired",
    ),
    "a token not valid yet": (
        lambda: hs256({"namespace": "team-a", "nbf": int(time.time()) + 600}),
        "not valid yet",
    ),
    "a missing claim": (lambda: hs256({"sub": "team-a"}), "no 'namespace' claim"),
    "an empty claim": (lambda: hs256({"namespace": ""}), "'namespace' claim is empty"),
    "a blank claim": (lambda: hs256({"namespace": "   "}), "'namespace' claim is empty"),
    "a number claim": (lambda: hs256({"namespace": 7}), "must be a string, got a number"),
    "a list claim": (lambda: hs256({"namespace": ["a"]}), "must be a string, got a list"),
    "a null claim": (lambda: hs256({"namespace": None}), "must be a string, got null"),
    "a claim too long": (lambda: hs256({"namespace": "x" * 129}), "the limit is 128"),
    "a claim that is not valid Unicode": (
        lambda: _with_payload(b'{"namespace": "a\\ud800"}'),
        "'namespace' claim is not valid Unicode",
    ),
    "an exp that is not a number": (
        lambda: hs256({"namespace": "team-a", "exp": "tomorrow"}),
        "cannot be decoded",
    ),
    "an aud the registry does not expect": (
        lambda: hs256({"namespace": "team-a", "aud": "someone-else"}),
        "aud",
    ),
    "garbage": (lambda: "garbage-that-is-no-jwt", "not a JWT"),
    "three garbage parts": (lambda: "abc.def.ghi", "not a JWT"),
    "a payload that is not an object": (
        lambda: _with_payload(b"[1, 2]"),
        "cannot be decoded",
    ),
}


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    claims = base64.urlsafe_b64encode(b'{"namespace": "team-b"}').rstrip(b"=").decode()
    return f"{header}.{claims}.{signature}"


def _with_payload(payload: bytes) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(payload)}"
    signature = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_mode_jwt_refuses_each_bad_token_with_a_401_naming_why(
    jwt_api: webtest.TestApp, case: str
) -> None:
    make, reason = BAD_TOKENS[case]
    token = make()
    answer = register(jwt_api, bearer(token))
    assert_refused(answer, reason, token)
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    good = hs256({"namespace": "team-a"})
    assert lookup(jwt_api, bearer(good)).json == {"result": []}, "nothing was registered"


def test_mode_jwt_without_a_token_is_a_401_asking_for_one(jwt_api: webtest.TestApp) -> None:
    answer = lookup(jwt_api)
    assert_refused(answer, "a bearer token is required (auth mode jwt)")
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="keyard"'


def test_jwt_require_exp_refuses_a_token_without_exp() -> None:
    api = app_with({"mode": "jwt", "jwt_secret": SECRET, "jwt_require_exp": True})
    assert_refused(lookup(api, bearer(hs256({"namespace": "a"}))), "no exp claim")
    token = hs256({"namespace": "a", "exp": int(time.time()) + 60})
    assert lookup(api, bearer(token)).status_int == 200


def test_the_claim_audience_issuer_and_leeway_are_configurable() -> None:
    api = app_with({
        "mode": "jwt", "jwt_secret": SECRET, "jwt_namespace_claim": "tenant",
        "jwt_audience": "keyard", "jwt_issuer": "https://issuer.example", "jwt_leeway": 30,
    })  # fmt: skip
    claims = {"tenant": "t1", "aud": "keyard", "iss": "https://issuer.example"}
    assert register(api, bearer(hs256(claims))).status_int == 201
    late = hs256({**claims, "exp": int(time.time()) - 10})  # within the leeway
    assert lookup(api, bearer(late)).json == {"result": [LOCATION]}
    without_tenant = {"namespace": "t1", "aud": "keyard", "iss": "https://issuer.example"}
    assert_refused(lookup(api, bearer(hs256(without_tenant))), "no 'tenant' claim")
    assert_refused(lookup(api, bearer(hs256({**claims, "aud": "other"}))), "aud is not 'keyard'")
    assert_refused(lookup(api, bearer(hs256({**claims, "iss": "evil"}))), "iss is not")


def _write_public_key(private: Any, path: Path) -> Path:
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_mode_jwt_with_an_rsa_public_key_accepts_rs256(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    path = _write_public_key(rsa_key, tmp_path / "issuer.pem")
    api = app_with({"mode": "jwt", "jwt_public_key": str(path)})
    token = jwt.encode({"namespace": "team-r"}, rsa_key, algorithm="RS256")
    assert register(api, bearer(token)).status_int == 201
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"namespace": "team-r"}, other, algorithm="RS256")
    assert_refused(lookup(api, bearer(forged)), "signature does not verify", forged)


def test_a_token_signed_with_hs256_by_the_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """The algorithm confusion attack: the public key is public, so it is no HMAC secret."""
    path = _write_public_key(rsa_key, tmp_path / "issuer.pem")
    api = app_with({"mode": "jwt", "jwt_public_key": str(path)})
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(b'{"namespace":"team-r"}').rstrip(b"=").decode()
    import hashlib
    import hmac

    signature = hmac.new(path.read_bytes(), f"{header}.{payload}".encode(), hashlib.sha256)
    token = f"{header}.{payload}." + base64.urlsafe_b64encode(signature.digest()).rstrip(
        b"="
    ).decode()
    assert_refused(lookup(api, bearer(token)), "HS256, which this registry does not accept")


def test_mode_jwt_with_an_ec_public_key_accepts_es256(
    ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    path = _write_public_key(ec_key, tmp_path / "issuer.pem")
    api = app_with({"mode": "jwt", "jwt_public_key": str(path)})
    token = jwt.encode({"namespace": "team-e"}, ec_key, algorithm="ES256")
    assert register(api, bearer(token)).status_int == 201
    assert_refused(
        lookup(api, bearer(jwt.encode({"namespace": "team-e"}, SECRET, algorithm="HS256"))),
        "HS256, which this registry does not accept; accepted: ES256",
    )


def test_an_rs256_token_against_an_ec_key_with_both_algorithms_listed_is_a_401(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    path = _write_public_key(ec_key, tmp_path / "issuer.pem")
    api = app_with({"mode": "jwt", "jwt_public_key": str(path), "jwt_algorithms": ["ES256"]})
    token = jwt.encode({"namespace": "team-e"}, rsa_key, algorithm="RS256")
    assert_refused(lookup(api, bearer(token)), "RS256, which this registry does not accept")


# -- a chain ---------------------------------------------------------------------------


def test_a_chain_jwt_then_trusted_sends_a_token_that_is_no_jwt_to_trusted() -> None:
    api = app_with({"mode": ["jwt", "trusted"], "jwt_secret": SECRET})
    register(api, bearer(hs256({"namespace": "team-a"})), instance_id="by-jwt")
    register(api, bearer("team-a"), instance_id="by-name")
    records = api.get("/keyard/services/payments", headers=bearer("team-a")).json["instances"]
    assert sorted(r["instance_id"] for r in records) == ["by-jwt", "by-name"]
    # A JWT that fails is refused; it does not become a namespace of its own.
    expired = hs256({"namespace": "team-a", "exp": int(time.time()) - 10})
    assert_refused(lookup(api, bearer(expired)), "expired", expired)
    assert_refused(lookup(api), "a bearer token is required (auth mode trusted)")


def test_a_chain_jwt_then_none_serves_default_without_a_token() -> None:
    api = app_with({"mode": "jwt,none", "jwt_secret": SECRET})
    assert register(api, {}).status_int == 201
    assert lookup(api, bearer(hs256({"namespace": "default"}))).json == {"result": [LOCATION]}
    assert lookup(api, bearer(hs256({"namespace": "team-a"}))).json == {"result": []}
    assert_refused(lookup(api, bearer("team-a")), "one namespace, 'default'")


# -- configuration ---------------------------------------------------------------------


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config.from_dict(data, source="config file 'c.json'")
    return str(caught.value)


def test_jwt_mode_without_a_key_refuses_to_start_and_there_is_no_built_in_secret() -> None:
    message = config_error({"auth": {"mode": "jwt"}})
    assert "auth mode jwt needs a key: jwt_secret" in message
    assert "there is no built-in secret" in message
    assert message.startswith("config file 'c.json', section 'auth': ")


def test_an_unreadable_or_wrong_key_file_refuses_to_start(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    missing = tmp_path / "missing.pem"
    assert "cannot be read: No such file" in config_error(
        {"auth": {"mode": "jwt", "jwt_public_key": str(missing)}}
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    assert "is not a PEM public key" in config_error(
        {"auth": {"mode": "jwt", "jwt_public_key": str(garbage)}}
    )
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert "holds a private key: give the public one" in config_error(
        {"auth": {"mode": "jwt", "jwt_public_key": str(private)}}
    )
    ed = _write_public_key(ed25519.Ed25519PrivateKey.generate(), tmp_path / "ed.pem")
    assert "give jwt_algorithms (one of EdDSA)" in config_error(
        {"auth": {"mode": "jwt", "jwt_public_key": str(ed)}}
    )
    rsa_path = _write_public_key(rsa_key, tmp_path / "rsa.pem")
    assert "ES256, which the RSA key" in config_error(
        {"auth": {"mode": "jwt", "jwt_public_key": str(rsa_path), "jwt_algorithms": ["ES256"]}}
    )


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"mode": "jwt", "jwt_secret": "short"}, "jwt_secret is 5 bytes long; HS256 needs"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_algorithms": ["HS512"]}, "needs at least 64"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_algorithms": ["RS256"]}, "needs a public key"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_algorithms": ["none"]}, "must not name none"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_algorithms": []}, "non-empty list"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_public_key": "k.pem"}, "not both"),
        ({"mode": "jwt", "jwt_secret": 12345678901234567890123456789012345}, "non-empty string"),
        ({"mode": "basic"}, "auth mode 'basic' is not known; valid: none, trusted, jwt"),
        ({"mode": ["trusted", "jwt"]}, "cannot be chained"),
        ({"mode": []}, "auth mode must be one of"),
        ({"mode": "trusted", "jwt_secret": SECRET}, "the jwt options take effect"),
        ({"mode": "trusted", "user": "x"}, "unknown auth option(s) user"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_require_exp": "yes"}, "true or false"),
        ({"mode": "jwt", "jwt_secret": SECRET, "jwt_leeway": -1}, "jwt_leeway must be"),
    ],
)
def test_a_bad_auth_section_is_one_message_naming_the_option(
    auth: dict[str, Any], expected: str
) -> None:
    message = config_error({"auth": auth})
    assert expected in message
    assert "\n" not in message


def test_config_messages_never_show_the_secret() -> None:
    for auth in (
        {"mode": "jwt", "jwt_secret": "short-secret"},
        {"mode": "trusted", "jwt_secret": "short-secret"},
        {"mode": "jwt", "jwt_secret": "short-secret", "jwt_algorithms": ["RS256"]},
    ):
        assert "short-secret" not in config_error({"auth": auth})
    loaded = config.from_dict({"auth": {"mode": "jwt", "jwt_secret": SECRET}})
    assert SECRET not in repr(loaded)


def test_the_auth_section_comes_from_keyard_auth_variables_too() -> None:
    digits = "1" * 40  # a secret that parses as JSON stays a string
    loaded = config.load(None, {"KEYARD_AUTH_MODE": "jwt", "KEYARD_AUTH_JWT_SECRET": digits,
                                "KEYARD_AUTH_JWT_REQUIRE_EXP": "true",
                                "KEYARD_AUTH_JWT_NAMESPACE_CLAIM": "tenant"})
    assert loaded.auth.modes == ("jwt",)
    assert loaded.auth.jwt_secret == digits
    assert loaded.auth.jwt_require_exp is True
    assert loaded.auth.jwt_namespace_claim == "tenant"
    chained = config.load(None, {"KEYARD_AUTH_MODE": '["jwt", "trusted"]',
                                 "KEYARD_AUTH_JWT_SECRET": SECRET})
    assert chained.auth.modes == ("jwt", "trusted")
    with pytest.raises(ConfigError, match="environment variable KEYARD_AUTH_MODE"):
        config.load(None, {"KEYARD_AUTH_MODE": "jwt"})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"namespace_capacity": 0}, "namespace_capacity must be a whole number of at least 1"),
        ({"namespace_capacity": "ten"}, "namespace_capacity must be"),
        ({"require_https": "yes"}, "require_https must be true or false"),
        ({"trusted_proxies": ["10.0.0.300"]}, "'10.0.0.300' is not an IP address or network"),
        ({"trusted_proxies": 5}, "must be a list"),
    ],
)
def test_bad_top_level_settings_are_one_message(data: dict[str, Any], expected: str) -> None:
    assert expected in config_error(data)


def test_top_level_settings_come_from_variables() -> None:
    loaded = config.load(None, {"KEYARD_NAMESPACE_CAPACITY": "10", "KEYARD_REQUIRE_HTTPS": "true",
                                "KEYARD_TRUSTED_PROXIES": "10.0.0.5, 10.0.1.0/24"})
    assert loaded.namespace_capacity == 10
    assert loaded.require_https is True
    assert loaded.trusted_proxies == ("10.0.0.5", "10.0.1.0/24")
    assert config.load(None, {}).namespace_capacity is None


# -- no token in a log line ------------------------------------------------------------


def test_no_token_or_namespace_reaches_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    trusted = app_with({"mode": "trusted"})
    jwt_app = app_with({"mode": "jwt", "jwt_secret": SECRET})
    name = "secret-namespace-token"
    good = hs256({"namespace": name})
    for api, token in ((trusted, name), (jwt_app, good)):
        register(api, bearer(token))
        lookup(api, bearer(token))
        api.get("/keyard/services", headers=bearer(token))
        api.get("/nothing", headers=bearer(token), expect_errors=True)
    for token in (_tampered(good), hs256({"namespace": name, "exp": 1}), "x" * 200):
        lookup(jwt_app, bearer(token))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert name not in logged
    assert good.split(".")[1] not in logged


# -- require_https ---------------------------------------------------------------------


def test_require_https_refuses_plain_http_with_a_403_naming_the_fix() -> None:
    api = app_with({"mode": "none"}, require_https=True)
    answer = lookup(api)
    assert answer.status_int == 403
    assert answer.json["title"] == "Forbidden"
    assert "accepts HTTPS requests only (require_https): use an https:// URL" in (
        answer.json["description"]
    )
    assert api.get("/keyard?service_name=x", extra_environ={"wsgi.url_scheme": "https"}).json == {
        "result": []
    }


def test_x_forwarded_proto_counts_only_from_a_trusted_proxy() -> None:
    api = app_with({}, require_https=True, trusted_proxies=["10.0.0.5", "192.168.1.0/24"])
    forwarded = {"X-Forwarded-Proto": "https"}

    def status(remote: str, headers: dict[str, str]) -> int:
        return api.get(
            "/keyard?service_name=x", headers=headers, expect_errors=True,
            extra_environ={"REMOTE_ADDR": remote},
        ).status_int  # fmt: skip

    assert status("10.0.0.5", forwarded) == 200
    assert status("192.168.1.77", forwarded) == 200
    assert status("::ffff:10.0.0.5", forwarded) == 200
    assert status("10.0.0.6", forwarded) == 403  # any client can send the header
    assert status("10.0.0.5", {}) == 403
    assert status("10.0.0.5", {"X-Forwarded-Proto": "http"}) == 403
    assert status("10.0.0.5", {"X-Forwarded-Proto": "https, http"}) == 403  # the proxy's is last
    answer = api.get("/keyard?service_name=x", headers=forwarded, expect_errors=True,
                     extra_environ={"REMOTE_ADDR": "10.9.9.9"})
    assert "list its address in trusted_proxies" in answer.json["description"]


def test_require_https_comes_before_authentication() -> None:
    api = app_with({"mode": "trusted"}, require_https=True)
    assert lookup(api).status_int == 403
    assert lookup(api, bearer("team")).status_int == 403


@pytest.fixture(autouse=True)
def _no_loaded_config() -> Iterator[None]:
    yield
    config.reset()
