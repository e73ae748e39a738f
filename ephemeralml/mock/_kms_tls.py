"""The mock's stand-in for AWS KMS's front door: TLS as ``kms.REGION.amazonaws.com``.

On Nitro the enclave's boto3 speaks HTTPS to ``kms.REGION.amazonaws.com`` through
its ``https_proxy``, a loopback relay over vsock to the host's egress proxy, which
lets a ``CONNECT`` through to that one target; the enclave checks the server's
certificate against the CA bundle in its image. Mock mode takes the same path and
differs only where AWS stands (protocol.md §10.3): the host's egress proxy resolves
the target to :class:`KmsTlsFront`, which ends TLS with a certificate for that name
from a mock CA and relays the plain HTTP to the local KMS server. The mock enclave
trusts that CA alone (:data:`~ephemeralml.runtime._home.MOCK_KMS_TLS_CA`).

The CA is made once per home (its key 0600 in the mock KMS's state) and published
each start; the server certificate is made at every start, for the region asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ephemeralml.common._errors import TransportError
from ephemeralml.host._egress import IDLE_TIMEOUT_S, pump_both
from ephemeralml.runtime._home import MOCK_KMS_STATE, MOCK_KMS_TLS_CA, read_bounded, write_atomic
from ephemeralml.runtime._transport import Endpoint, Listener, open_connection

from ._certs import cert_pem, issue, key_pem, load_pair, mock_name, new_key, whole_seconds

__all__ = ["TLS_CA_LIFETIME", "TLS_LEAF_LIFETIME", "KmsTlsFront", "ensure_tls_ca", "kms_host"]

#: The mock TLS CA lives as long as a home does, like a CA bundle in an image.
TLS_CA_LIFETIME = timedelta(days=10 * 365)
#: The server certificate is made at every start.
TLS_LEAF_LIFETIME = timedelta(days=30)
#: Relative to the home: the CA's key and certificate (0600).
TLS_CA_STATE = MOCK_KMS_STATE / "tls-ca.pem"
_MAX_CA_BYTES = 16 * 1024
#: Dialling the local KMS server.
_TIMEOUT_S = 10.0


def kms_host(region: str) -> str:
    return f"kms.{region}.amazonaws.com"


def ensure_tls_ca(home: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The home's mock TLS CA, made the first time (exclusively: two hosts starting at
    once end up with the same CA), and its certificate published for the enclave."""
    state = home / TLS_CA_STATE
    if not state.exists():
        key = new_key()
        name = mock_name("ephemeralml MOCK KMS TLS CA - NOT AWS")
        cert = issue(
            subject=name, key=key, issuer=name, issuer_key=key,
            not_before=whole_seconds(datetime.now(UTC)) - timedelta(days=1),
            lifetime=TLS_CA_LIFETIME, ca_path_length=0, is_ca=True,
        )  # fmt: skip
        state.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=state.parent, prefix=f".{state.name}.")
        try:
            with os.fdopen(fd, "wb") as f:  # mkstemp: 0600
                f.write(key_pem(key) + cert_pem(cert))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another host made it first
                os.link(tmp, state)
        finally:
            os.unlink(tmp)
    what = f"mock KMS TLS CA {state} (delete it to make a new one)"
    key, cert = load_pair(read_bounded(state, _MAX_CA_BYTES, "mock KMS TLS CA"), what=what)
    write_atomic(home / MOCK_KMS_TLS_CA, cert_pem(cert))
    return key, cert


def _server_context(home: Path, host_name: str) -> ssl.SSLContext:
    ca_key, ca_cert = ensure_tls_ca(home)
    key = new_key()
    cert = issue(
        subject=mock_name(host_name), key=key, issuer=ca_cert.subject, issuer_key=ca_key,
        not_before=whole_seconds(datetime.now(UTC)) - timedelta(minutes=5),
        lifetime=TLS_LEAF_LIFETIME, ca_path_length=None, is_ca=False, dns_names=(host_name,),
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a key only from a file: one in a private folder, gone once loaded.
    folder = tempfile.mkdtemp(prefix="ephemeralml-kms-tls.")
    try:
        pem = Path(folder) / "server.pem"
        write_atomic(pem, key_pem(key) + cert_pem(cert), mode=0o600)
        ctx.load_cert_chain(pem)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ctx


class KmsTlsFront:
    """Ends TLS as ``kms.REGION.amazonaws.com`` on a loopback port and relays to the
    local KMS server at ``upstream``; :attr:`bound` is where the egress proxy dials."""

    def __init__(self, home: Path, region: str, upstream: Endpoint) -> None:
        self._home, self._region, self._upstream = home, region, upstream
        self._listener: Listener | None = None
        self.bound: Endpoint | None = None

    async def start(self) -> Endpoint:
        ctx = await asyncio.to_thread(_server_context, self._home, kms_host(self._region))
        self._listener = Listener(Endpoint.tcp("127.0.0.1", 0), self._serve, ssl=ctx)
        self.bound = await self._listener.start()
        return self.bound

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_w: asyncio.StreamWriter | None = None
        try:
            up_r, up_w = await open_connection(self._upstream, timeout=_TIMEOUT_S, peer="mock KMS")
            await pump_both(reader, writer, up_r, up_w, IDLE_TIMEOUT_S)
        except (TransportError, ConnectionError, OSError):
            pass  # the enclave's boto3 sees the connection end, and retries or says so
        finally:
            for w in (writer, up_w):
                if w is not None:
                    w.close()
