"""What a mock enclave measures, and the model-owner keys its image carries.

A real enclave's PCRs measure its EIF: code, runtime and whatever configuration the
image holds (here: the model-owner keys it trusts). The model itself is *not* in the
image; it is fetched at run time and attested through the binding's manifest digest.
The mock derives PCR0/1/2 from the same inputs, so a changed file or a changed
owner key changes them, as a rebuilt EIF would. A build (here: the host's mock
provisioning, later the EIF build) computes them the same way to write the KMS key
policy.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable
from pathlib import Path

import ephemeralml as _top_pkg
import ephemeralml.common as _common_pkg
import ephemeralml.enclave as _enclave_pkg
import ephemeralml.host as _host_pkg
from ephemeralml.common._bundle import owner_key_id
from ephemeralml.common._errors import ConfigError

from ._nsm import code_digest, mock_measurements

__all__ = [
    "enclave_code_digest",
    "load_owner_keys",
    "mock_enclave_measurements",
    "owner_keys_digest",
    "runtime_id",
]

#: A list of trusted owner keys is short; a file beyond this is a mistake.
_MAX_OWNER_KEYS = 64


def enclave_code_digest() -> bytes:
    """SHA-384 of every project file the enclave program runs.

    The enclave and common packages, the transport seam it shares with the host
    (host/), and the top-level package (ephemeralml/).
    """
    dirs = [
        Path(pkg.__file__).resolve().parent
        for pkg in (_top_pkg, _common_pkg, _host_pkg, _enclave_pkg)
        if pkg.__file__ is not None
    ]
    return code_digest(dirs)


def runtime_id() -> str:
    import onnxruntime

    return (
        f"{platform.python_implementation()}-{platform.python_version()}"
        f"-onnxruntime-{onnxruntime.__version__}"
    )


def load_owner_keys(path: Path) -> dict[bytes, bytes]:
    """A model-owners file: one raw Ed25519 public key in hex per line (# comments).

    Returns owner key id → raw public key, as ``verify_manifest`` takes them.
    """
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError as e:
        raise ConfigError(f"no model-owner keys at {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read model-owner keys at {path}: {e}") from e
    keys: dict[bytes, bytes] = {}
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"{path}:{n}: a model-owner key is 64 hex digits (raw Ed25519)")
        keys[owner_key_id(raw)] = raw
    if not keys or len(keys) > _MAX_OWNER_KEYS:
        raise ConfigError(f"{path} must list 1..{_MAX_OWNER_KEYS} model-owner keys")
    return keys


def owner_keys_digest(keys: Iterable[bytes]) -> bytes:
    """SHA-384 over the sorted raw owner keys: the image configuration that PCR0 covers."""
    h = hashlib.sha384(b"ephemeralml/1 model-owner keys\x00")
    for k in sorted(keys):
        h.update(k)
    return h.digest()


def mock_enclave_measurements(owner_keys: Iterable[bytes]) -> dict[int, bytes]:
    """PCR0/1/2/8 of a mock enclave running this code with these owner keys."""
    return mock_measurements(
        code_digest=enclave_code_digest(),
        model_digest=owner_keys_digest(owner_keys),
        runtime_id=runtime_id(),
    )
