"""``server.tls`` and ``server.cors`` through real sockets: https with a certificate the
test generates (``cryptography``), client certificates (mutual TLS) required and
optional, ``clasp serve`` itself on https; CORS off by default, on for listed origins
only, and ``*`` with credentials refused with the rest of a file's mistakes."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clasp_gateway import ConfigError
from clasp_gateway.testing import GATEWAY_KEY, GatewayServer, config_from, free_port


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key: Any, cert: x509.Certificate) -> tuple[str, str]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def _cert(subject: str, issuer_key: Any, issuer: x509.Name, key: Any, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from the CA;
    and a client certificate from a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("clasp test CA", ca_key, _name("clasp test CA"), ca_key, ca=True)
    ca_pem, _ = _write(d / "ca", ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _write(d / "server", server_key, _cert("127.0.0.1", ca_key, ca.subject, server_key, server=True))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _write(d / "client", client_key, _cert("alice", ca_key, ca.subject, client_key))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("stranger CA", other_key, _name("stranger CA"), other_key, ca=True)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _write(d / "stranger", stranger_key, _cert("mallory", other_key, other_ca.subject, stranger_key))
    return {"ca": ca_pem, "server": server, "client": client, "stranger": stranger}


def _context(pki: dict[str, Any], client: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if client is not None:
        context.load_cert_chain(*client)
    return context


def _tls(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    certfile, keyfile = pki["server"]
    return {"certfile": certfile, "keyfile": keyfile, **extra}


def test_https_with_the_configured_certificate(pki: dict[str, Any]) -> None:
    with GatewayServer(config_from({"server": {"tls": _tls(pki)}})) as server:
        assert server.base_url.startswith("https://")
        answer = httpx.get(server.base_url + "/health", verify=_context(pki), timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        shaped = httpx.get(server.base_url + "/-/plugins", verify=_context(pki), timeout=10)
        assert shaped.status_code == 401 and shaped.json()["type"] == "error"
        with pytest.raises(httpx.HTTPError):  # plain http on the TLS port gets no answer
            httpx.get(server.base_url.replace("https://", "http://") + "/health", timeout=5)


def test_client_certificates_required(pki: dict[str, Any]) -> None:
    config = config_from({"server": {"tls": _tls(pki, ca_certs=pki["ca"], client_cert="required")}})
    with GatewayServer(config) as server:
        url = server.base_url + "/health"
        assert httpx.get(url, verify=_context(pki, pki["client"]), timeout=10).status_code == 200
        for client in (None, pki["stranger"]):
            with pytest.raises((httpx.HTTPError, ssl.SSLError)):
                httpx.get(url, verify=_context(pki, client), timeout=10)


def test_client_certificates_optional(pki: dict[str, Any]) -> None:
    config = config_from({"server": {"tls": _tls(pki, ca_certs=pki["ca"], client_cert="optional")}})
    with GatewayServer(config) as server:
        url = server.base_url + "/health"
        assert httpx.get(url, verify=_context(pki), timeout=10).status_code == 200
        assert httpx.get(url, verify=_context(pki, pki["client"]), timeout=10).status_code == 200
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):  # one sent is verified
            httpx.get(url, verify=_context(pki, pki["stranger"]), timeout=10)


def test_clasp_serve_listens_on_https(pki: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": port, "tls": _tls(pki)},
                                    "keys": [{"key": GATEWAY_KEY, "name": "tests"}],
                                    "storage": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"}}))
    env = {**os.environ, "CLASP_DATA_DIR": str(tmp_path), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen([sys.executable, "-m", "clasp_gateway.cli", "serve", "-c", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/health", verify=_context(pki), timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "clasp serve did not answer on https within 60s"
                time.sleep(0.2)
        assert answer.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"listening on https://127.0.0.1:{port}" in err.decode()


def test_tls_and_cors_mistakes_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from({"server": {
            "tls": {"certfile": str(tmp_path / "missing.pem"), "client_cert": "required"},
            "cors": {"allow_origins": ["*", "https://ok.example.com/path"], "allow_credentials": True},
        }})
    text = str(raised.value)
    for expected in ("certfile and keyfile go together", "client_cert: required needs server.tls.ca_certs",
                     "allow_credentials: true would let any web site", "server.cors.allow_origins.1: expected an origin"):
        assert expected in text, text


def test_unreadable_certificates_stop_check_and_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clasp_gateway.cli import main

    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"server": {"tls": {"certfile": str(tmp_path / "missing.pem"),
                                                       "keyfile": str(tmp_path / "missing.key")}}}))
    for command in (["check", "--no-probe"], ["serve"]):
        with pytest.raises(SystemExit) as raised:
            main([*command, "-c", str(path)])
        assert raised.value.code == 2
        err = capsys.readouterr().err
        assert "server.tls.certfile: cannot read" in err and "server.tls.keyfile: cannot read" in err


def _preflight(server: GatewayServer, origin: str) -> httpx.Response:
    return httpx.options(server.base_url + "/v1/messages", timeout=10, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "x-api-key,content-type"})


def test_cors_is_off_by_default() -> None:
    with GatewayServer(config_from({})) as server:
        answer = httpx.get(server.base_url + "/health", headers={"origin": "https://evil.example.com"}, timeout=10)
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in _preflight(server, "https://evil.example.com").headers


def test_cors_for_listed_origins_only() -> None:
    config = config_from({"server": {"cors": {"allow_origins": ["https://app.example.com"]}}})
    with GatewayServer(config) as server:
        ok = _preflight(server, "https://app.example.com")
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        refused = _preflight(server, "https://evil.example.com")
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        simple = httpx.get(server.base_url + "/-/plugins", timeout=10,
                           headers={"origin": "https://app.example.com", **server.headers})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "request-id" in simple.headers["access-control-expose-headers"]
