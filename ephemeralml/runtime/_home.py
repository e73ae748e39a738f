"""Where the programs keep local state (not part of the protocol core).

``EPHEMERALML_HOME`` (default ``~/.ephemeralml``) holds, in mock mode, the mock
NSM's CA (``mock-nsm/``) and what the mock enclave *publishes* for clients on the
same machine (``published/``): its root certificate and its measurements, the
way a production build publishes the PCRs of its EIF.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ephemeralml.common._errors import ConfigError

__all__ = [
    "MOCK_FLOORS",
    "MOCK_KMS_CREDENTIALS",
    "MOCK_KMS_STATE",
    "MOCK_KMS_TLS_CA",
    "MOCK_MEASUREMENTS",
    "MOCK_NSM_STATE",
    "MOCK_OWNERS",
    "MOCK_OWNER_KEY",
    "MOCK_PROVISION",
    "MOCK_ROOT",
    "MOCK_STORE",
    "default_home",
    "read_bounded",
    "read_limited",
    "write_atomic",
]

#: Relative to the home: the mock root the enclave published.
MOCK_ROOT = Path("published") / "mock-root.pem"
#: Relative to the home: the model-owner keys a mock enclave trusts (what a real
#: enclave image carries), written by the host's mock provisioning.
MOCK_OWNERS = Path("published") / "model-owners.txt"
#: Relative to the home: the mock enclave's measurements (PCRs).
MOCK_MEASUREMENTS = Path("published") / "measurements.json"
#: Relative to the home: a mock enclave's model floors (folded into its PCR0, M11).
MOCK_FLOORS = Path("published") / "model-floors.txt"
#: Relative to the home: the mock NSM's CA (keys 0600: development material).
MOCK_NSM_STATE = Path("mock-nsm")
#: Relative to the home: the local KMS server's state (its keys and its principals'
#: credentials), made by ``ephemeral-host --mock``.
MOCK_KMS_STATE = Path("mock-kms")
#: Relative to the home: the mock KMS principals' SigV4 credentials (0600). The model
#: owner's are what ``ephemeral model package --mock`` signs with.
MOCK_KMS_CREDENTIALS = MOCK_KMS_STATE / "credentials.json"
#: Relative to the home: the CA certificate the mock enclave trusts for KMS's TLS (what
#: a production image's CA bundle is), published by ``ephemeral-host --mock``.
MOCK_KMS_TLS_CA = Path("published") / "mock-kms-ca.pem"
#: Relative to the home: the mock model owner's Ed25519 signing key (PEM, 0600); its
#: public half is what :data:`MOCK_OWNERS` lists.
MOCK_OWNER_KEY = Path("mock-owner.pem")
#: Relative to the home: what mock provisioning made (``{"kms_key_id": ...}``).
MOCK_PROVISION = Path("mock-provision.json")
#: Relative to the home: the mock host's local model store.
MOCK_STORE = Path("store")


def default_home() -> Path:
    env = os.environ.get("EPHEMERALML_HOME")
    return Path(env).expanduser() if env else Path.home() / ".ephemeralml"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees half a file.

    A temporary file in the same folder, synced, then ``os.replace``; on any error
    the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_limited(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (one more than allowed, so the caller
    sees that a file is too big without reading all of it); :class:`ConfigError` if it
    cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """All of ``path`` if it is at most ``limit`` bytes, else a one-line
    :class:`ConfigError`: ``WHAT PATH does not exist``, ``cannot read WHAT PATH: ...``
    or ``WHAT PATH is over LIMIT bytes``. Reads no more than ``limit + 1`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is over {limit} bytes")
    return data
