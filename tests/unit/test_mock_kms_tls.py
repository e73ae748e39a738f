"""The mock's TLS front for KMS (mock/_kms_tls.py): the mock takes the Nitro path to KMS,
TLS as ``kms.REGION.amazonaws.com`` under a CA the mock enclave alone trusts."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from ephemeralml.common._errors import ConfigError
from ephemeralml.mock._kms_tls import TLS_CA_STATE, KmsTlsFront, ensure_tls_ca
from ephemeralml.runtime._home import MOCK_KMS_TLS_CA
from ephemeralml.runtime._transport import Endpoint


def test_the_ca_is_made_once_kept_private_and_published(tmp_path: Path) -> None:
    key, cert = ensure_tls_ca(tmp_path)
    again_key, again = ensure_tls_ca(tmp_path)
    assert again == cert and again_key.private_numbers() == key.private_numbers()
    assert stat.S_IMODE(os.stat(tmp_path / TLS_CA_STATE).st_mode) == 0o600
    published = x509.load_pem_x509_certificate((tmp_path / MOCK_KMS_TLS_CA).read_bytes())
    assert published == cert
    assert "MOCK" in cert.subject.rfc4514_string() and "NOT AWS" in cert.subject.rfc4514_string()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    # No temporary file is left beside the state.
    assert sorted(p.name for p in (tmp_path / TLS_CA_STATE).parent.iterdir()) == ["tls-ca.pem"]


def test_a_damaged_ca_is_one_line_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / TLS_CA_STATE
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a pem")
    with pytest.raises(ConfigError) as ei:
        ensure_tls_ca(tmp_path)
    assert ei.value.message.startswith(
        f"mock KMS TLS CA {state} (delete it to make a new one): unreadable ("
    )
    assert "\n" not in ei.value.message


async def _echo_upstream() -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(data.upper())
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def _client_context(cafile: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


async def _through_front(tmp_path: Path, server_hostname: str, cafile: Path | None) -> bytes:
    upstream = await _echo_upstream()
    front = KmsTlsFront(
        tmp_path, "eu-west-1", Endpoint.tcp("127.0.0.1", upstream.sockets[0].getsockname()[1])
    )
    bound = await front.start()
    try:
        r, w = await asyncio.open_connection(
            "127.0.0.1", bound.port, ssl=_client_context(cafile), server_hostname=server_hostname
        )
        w.write(b"post / http/1.1")
        data = await asyncio.wait_for(r.readexactly(15), 10)
        w.close()
        return data
    finally:
        await front.close()
        upstream.close()


def test_the_front_is_the_regions_kms_under_the_published_ca_and_relays(tmp_path: Path) -> None:
    got = asyncio.run(
        _through_front(tmp_path, "kms.eu-west-1.amazonaws.com", tmp_path / MOCK_KMS_TLS_CA)
    )
    assert got == b"POST / HTTP/1.1"


@pytest.mark.parametrize(
    ("name", "trusted", "reason"),
    [
        # Another region's KMS is not who the certificate names.
        ("kms.us-east-1.amazonaws.com", True, "Hostname mismatch"),
        # The system's CAs do not know the mock CA: a client that was not told to trust
        # the mock refuses it.
        ("kms.eu-west-1.amazonaws.com", False, "unable to get local issuer certificate"),
    ],
)
def test_a_client_refuses_the_front_unless_told_to_trust_it_for_that_name(
    tmp_path: Path, name: str, trusted: bool, reason: str
) -> None:
    ensure_tls_ca(tmp_path)
    cafile = tmp_path / MOCK_KMS_TLS_CA if trusted else None
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        asyncio.run(_through_front(tmp_path, name, cafile))
