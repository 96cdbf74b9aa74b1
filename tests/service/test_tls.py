"""`pkeyd serve` over HTTPS with auth, and the start-up checks of TLS and exposure."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pkeyd.admin import open_store
from pkeyd.auth import Role, TokenService
from pkeyd.ctl.main import main as ctl_main
from tests.service.conftest import ChildDaemon


def self_signed(folder: Path, name: str = "pkeyd") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _wait_https(http: aiohttp.ClientSession, url: str, daemon: ChildDaemon) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert daemon.proc is not None
        assert daemon.proc.returncode is None, daemon.log()
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"not serving HTTPS: {daemon.log()}"
        await asyncio.sleep(0.05)


async def test_serves_https_with_auth_to_a_verifying_client(
    tmp_path: Path, child_daemons: list[ChildDaemon]
) -> None:
    cert, key = self_signed(tmp_path)
    async with open_store(f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db") as sessions:
        _, token = await TokenService(sessions).create("ops", Role.OPERATOR)
    daemon = ChildDaemon(tmp_path, "--auth", "--tls-cert", str(cert), "--tls-key", str(key))
    child_daemons.append(daemon)
    await daemon.start()
    base = f"https://127.0.0.1:{daemon.port}"
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
        await _wait_https(http, f"{base}/healthz", daemon)
        async with http.get(f"{base}/api/v1/partitions") as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {token}"}
        body = {"name": "tenant-a", "pkey": "0x0a12"}
        async with http.post(f"{base}/api/v1/partitions", json=body, headers=headers) as resp:
            assert resp.status == 201
        async with http.get(f"{base}/api/v1/partitions/0x0a12", headers=headers) as resp:
            assert (await resp.json())["name"] == "tenant-a"
    # pkeyctl trusts the certificate given with --cacert.
    out, err = io.StringIO(), io.StringIO()
    argv = ["--url", base, "--cacert", str(cert), "--token", token, "list"]
    code = await asyncio.to_thread(ctl_main, argv, environ={"HOME": "/x"}, out=out, err=err)
    assert (code, err.getvalue()) == (0, "")
    assert "tenant-a" in out.getvalue()
    untrusted = await asyncio.to_thread(
        ctl_main, argv[:2] + argv[4:], environ={"HOME": "/x"}, out=out, err=err
    )
    assert untrusted == 3
    assert "CERTIFICATE_VERIFY_FAILED" in err.getvalue()
    # A client that does not trust the certificate refuses the server...
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{base}/healthz")
        # ...and plain HTTP gets no answer from the TLS socket.
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://127.0.0.1:{daemon.port}/healthz")
    events = [e for e in daemon.events() if e.get("event") == "pkeyd_listening"]
    assert events[0]["tls"] is True
    assert events[0]["auth"] is True


def _serve_exit(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = ChildDaemon(tmp_path, *flags).argv()
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_bad_tls_files_stop_serve_naming_the_setting(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "one")
    _, other_key = self_signed(tmp_path, "two")
    mismatch = _serve_exit(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert mismatch.returncode == 2
    assert f"tls_cert {cert} and tls_key {other_key} do not load" in mismatch.stderr
    missing = _serve_exit(tmp_path, "--tls-cert", str(cert), "--tls-key", str(tmp_path / "no"))
    assert missing.returncode == 2
    assert f"tls_key {tmp_path / 'no'}: cannot read it" in missing.stderr
    half = _serve_exit(tmp_path, "--tls-cert", str(cert))
    assert half.returncode == 2
    assert "set both tls_cert and tls_key" in half.stderr


def test_non_loopback_listen_without_auth_is_refused(tmp_path: Path) -> None:
    done = _serve_exit(tmp_path, "--listen", "0.0.0.0:1")
    assert done.returncode == 2
    assert "listen_host 0.0.0.0 is reachable from other hosts: set auth = true" in done.stderr
