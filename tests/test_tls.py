"""HTTPS and tokens against the real ``keyard serve`` process, under each server.

A certificate authority and a certificate for 127.0.0.1 are made in the test
(``cryptography``); the client and the CLI verify the server with the CA file. The
token (in trusted mode, the namespace itself) never appears in a log line, the
access log included.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyard.cli import main
from keyard.client import ConnectionFailed, Forbidden, KeyardClient, Unauthorized
from tests import gunicorn_server, keyard_serve
from tests.conftest import free_port

SERVERS = pytest.mark.parametrize("server", keyard_serve.SERVERS)
TOKEN = "tls-team-7f3a"
#: A token outside ASCII: keyard serve hands its UTF-8 bytes on under both servers.
UNICODE_TOKEN = "équipe-ünï"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 that it signed: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyard test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.mark.slow
@SERVERS
def test_keyard_serve_serves_https_and_the_client_and_cli_verify_it_with_a_ca_file(
    server: str, tmp_path: Path, certificates: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = certificates
    keyard_serve.write_config(
        tmp_path,
        json.dumps({"store_type": "simple", "auth": {"mode": "trusted"}, "require_https": True}),
    )
    args = ["--certfile", str(cert), "--keyfile", str(key), "--access-log"]
    with keyard_serve.start(server, tmp_path, free_port(), args, cafile=str(ca)) as served:
        assert served.url.startswith("https://")
        client = KeyardClient(served.url, token=TOKEN, cafile=str(ca), timeout=5)
        assert TOKEN not in repr(client)
        registration = client.register("web", "http://10.0.0.7:9000", ttl=60)
        assert registration.created
        (record,) = client.instances("web")
        assert record.namespace == TOKEN
        unicode_client = KeyardClient(served.url, token=UNICODE_TOKEN, cafile=str(ca))
        unicode_client.register("web", "http://10.0.0.8:9000")
        (record,) = unicode_client.instances("web")
        assert record.namespace == UNICODE_TOKEN  # the header's UTF-8 bytes
        assert client.lookup("web") == ["http://10.0.0.7:9000"]
        assert KeyardClient(served.url, token="other", cafile=str(ca)).lookup("web") == []
        with pytest.raises(Unauthorized, match="a bearer token is required"):
            KeyardClient(served.url, cafile=str(ca)).lookup("web")
        with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
            KeyardClient(served.url, token=TOKEN).lookup("web")  # the system's CAs
        runner = CliRunner()
        result = runner.invoke(
            main, ["lookup", "--service-name", "web", "--url", served.url, "--cafile", str(ca)],
            env={"KEYARD_TOKEN": TOKEN},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "http://10.0.0.7:9000" in result.output
        assert TOKEN not in result.output
        refused = runner.invoke(
            main, ["lookup", "--service-name", "web", "--url", served.url, "--cafile", str(ca)]
        )
        assert refused.exit_code == 1 and "a bearer token is required" in refused.output
        assert served.stop() == 0
        output = served.output()
    assert "GET /keyard" in output or "/keyard" in output, output
    assert TOKEN not in output
    assert UNICODE_TOKEN not in output
    assert UNICODE_TOKEN.encode().decode("latin-1") not in output


@pytest.mark.slow
@SERVERS
def test_require_https_refuses_plain_http_under_the_real_server(
    server: str, tmp_path: Path
) -> None:
    keyard_serve.write_config(tmp_path, '{"store_type": "simple", "require_https": true}')
    with keyard_serve.start(server, tmp_path, free_port()) as served:
        with pytest.raises(Forbidden, match="accepts HTTPS requests only"):
            KeyardClient(served.url).lookup("web")
        request = urllib.request.Request(
            served.url + "/keyard?service_name=web", headers={"X-Forwarded-Proto": "https"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)  # 127.0.0.1 is no trusted proxy here
        assert caught.value.code == 403
        assert "trusted_proxies" in json.loads(caught.value.read())["description"]
    (tmp_path / "config.json").write_text(
        '{"store_type": "simple", "require_https": true, "trusted_proxies": ["127.0.0.1"]}'
    )
    with keyard_serve.start(server, tmp_path, free_port()) as served:
        request = urllib.request.Request(
            served.url + "/keyard?service_name=web", headers={"X-Forwarded-Proto": "https"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # from a trusted proxy
            assert json.loads(answer.read()) == {"result": []}


@SERVERS
@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("cert", None), "Error: --certfile is given without --keyfile: HTTPS needs both"),
        (("missing", "key"), "cannot be read: no such file"),
        (("key", "key"), "cannot be used"),
    ],
)
def test_bad_tls_files_stop_keyard_serve_with_one_message(
    server: str,
    tmp_path: Path,
    certificates: tuple[Path, Path, Path],
    files: tuple[str, str | None],
    message: str,
) -> None:
    _, cert, key = certificates
    named = {"cert": str(cert), "key": str(key), "missing": str(tmp_path / "missing.pem")}
    args = ["--certfile", named[files[0]]]
    if files[1] is not None:
        args += ["--keyfile", named[files[1]]]
    result = keyard_serve.run_to_exit(server, tmp_path, free_port(), args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr


@SERVERS
def test_jwt_mode_without_a_key_stops_keyard_serve_with_one_message(
    server: str, tmp_path: Path
) -> None:
    result = keyard_serve.run_to_exit(
        server, tmp_path, free_port(), env={"KEYARD_AUTH_MODE": "jwt"}
    )
    assert result.returncode == 2, result.stderr
    assert "auth mode jwt needs a key" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr


@pytest.mark.slow
def test_jwt_mode_with_an_unreadable_key_under_plain_gunicorn_is_one_message(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "issuer.pem"
    code, output = gunicorn_server.run_to_exit(
        "keyard.wsgi:app",
        free_port(),
        {"KEYARD_AUTH_MODE": "jwt", "KEYARD_AUTH_JWT_PUBLIC_KEY": str(missing),
         "KEYARD_STORE_TYPE": "simple"},
    )  # fmt: skip
    assert code != 0, output
    assert output.count(f"jwt_public_key {str(missing)!r} cannot be read") == 1, output
    assert "Traceback" not in output, output
