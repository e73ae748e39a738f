"""What a mock enclave measures, and the configuration its image carries.

A real enclave's PCRs measure its EIF: code, runtime and whatever configuration the
image holds (here: the model-owner keys it trusts, and the floor below which it
refuses each model's releases, M11). The model itself is *not* in the image; it is
fetched at run time and attested through the binding's manifest digest. The mock
derives PCR0/1/2 from the same inputs, so a changed file, a changed owner key or a
changed floor changes them, as a rebuilt EIF would: a host cannot lower a floor
without changing the PCRs that clients pin and the KMS key policy checks. A build
(here: the host's mock provisioning, later the EIF build) computes them the same way
to write the KMS key policy.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ephemeralml as _top_pkg
from ephemeralml.common._bundle import MAX_RELEASE, owner_key_id
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import ConfigError

__all__ = [
    "ENCLAVE_IMAGE_PACKAGES",
    "NITRO_FLOORS",
    "code_digest",
    "enclave_code_digest",
    "enclave_image_files",
    "image_config_digest",
    "load_model_floors",
    "load_owner_keys",
    "model_floors_digest",
    "owner_keys_digest",
    "runtime_id",
]

#: A list of trusted owner keys is short; a file beyond this is a mistake.
_MAX_OWNER_KEYS = 64
#: One floor per model an image may load; a longer list is a mistake.
_MAX_FLOORS = 64
#: Bytes of a floors file: 64 lines of a 256-character id and a number fit easily.
_MAX_FLOORS_FILE_BYTES = 64 * 1024

#: Model floors built into a Nitro image, beside its model-owner keys (measured).
NITRO_FLOORS = "/etc/ephemeralml/model-floors.txt"


def _skipped(rel: Path) -> bool:
    # Caches, virtual environments and VCS folders are not code we ship.
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts[:-1])


def code_digest(package_root: Path | Sequence[Path]) -> bytes:
    """SHA-384 over every ``*.py`` file under one folder or several (or a file given
    itself, named by its file name), deterministically.

    Files are taken in sorted order of (position of the folder in the argument,
    POSIX path relative to that folder); each contributes
    ``encode([position, relative_path, file_bytes])``. Hidden folders and
    ``__pycache__`` are skipped. The folders' own names and locations do not count,
    so the same tree checked out elsewhere digests the same.
    """
    roots = [package_root] if isinstance(package_root, str | os.PathLike) else list(package_root)
    if not roots:
        raise ConfigError("code digest: no folder given")
    entries: list[tuple[int, str, Path]] = []
    for position, root in enumerate(roots):
        root = Path(root)
        if root.is_file():
            entries.append((position, root.name, root))
            continue
        if not root.is_dir():
            raise ConfigError(f"code digest: {root} is not a file or folder")
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if path.is_file() and not _skipped(rel):
                entries.append((position, rel.as_posix(), path))
    if not entries:
        raise ConfigError(f"code digest: no *.py files under {', '.join(map(str, roots))}")
    h = hashlib.sha384()
    h.update(encode(["ephemeralml-code-digest-v1", len(entries)]))
    for position, rel_posix, path in sorted(entries, key=lambda e: (e[0], e[1])):
        try:
            content = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"code digest: cannot read {path}: {e}") from e
        h.update(encode([position, rel_posix, content]))
    return h.digest()


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


#: The subpackages of ``ephemeralml`` an enclave image carries, beside the top-level
#: ``__init__.py``: the protocol core, the neutral runtime and the enclave program.
#: Nothing of the host, the client or the mock package is in the image; the import
#: contract (``.importlinter``) keeps the enclave from needing them.
ENCLAVE_IMAGE_PACKAGES = ("common", "runtime", "enclave")


def enclave_image_files() -> list[Path]:
    """The roots :func:`enclave_code_digest` measures, in order."""
    assert _top_pkg.__file__ is not None
    top = Path(_top_pkg.__file__).resolve().parent
    return [top / "__init__.py", *(top / name for name in ENCLAVE_IMAGE_PACKAGES)]


def enclave_code_digest() -> bytes:
    """SHA-384 of every project file the enclave image carries (:func:`enclave_image_files`)."""
    return code_digest(enclave_image_files())


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


def load_model_floors(path: Path) -> dict[str, int]:
    """A model-floors file: ``MODEL_ID MIN_RELEASE`` a line (# comments) (M11).

    The enclave refuses a manifest of that model whose ``release`` is below the
    floor. An absent file means no floors (and measures like one with none); a file
    that exists but cannot be read or parsed is an error, never taken as empty
    (that would silently drop anti-rollback).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FLOORS_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read model floors at {path}: {e.strerror}") from e
    if len(data) > _MAX_FLOORS_FILE_BYTES:
        raise ConfigError(f"{path} is over {_MAX_FLOORS_FILE_BYTES} bytes")
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: model floors must be ASCII text") from e
    floors: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or len(parts[0]) > 256:
            raise ConfigError(f"{path}:{n}: a floor is MODEL_ID MIN_RELEASE (decimal)")
        model_id, floor = parts[0], int(parts[1])
        if not 1 <= floor <= MAX_RELEASE:
            raise ConfigError(f"{path}:{n}: a floor is 1..{MAX_RELEASE}")
        if model_id in floors:
            raise ConfigError(f"{path}:{n}: {model_id} has a floor already")
        floors[model_id] = floor
    if len(floors) > _MAX_FLOORS:
        raise ConfigError(f"{path} lists more than {_MAX_FLOORS} model floors")
    return floors


def model_floors_digest(floors: Mapping[str, int]) -> bytes:
    """SHA-384 over the floors as deterministic CBOR (a map id → floor)."""
    return hashlib.sha384(b"ephemeralml/1 model floors\x00" + encode(dict(floors))).digest()


def image_config_digest(owner_keys: Iterable[bytes], floors: Mapping[str, int]) -> bytes:
    """What PCR0 covers of the image's configuration: owner keys, then floors.

    Without floors it is the owner keys' digest alone, so an image that carries no
    floors measures as before floors existed.
    """
    keys = owner_keys_digest(owner_keys)
    if not floors:
        return keys
    return hashlib.sha384(
        b"ephemeralml/1 image config\x00" + keys + model_floors_digest(floors)
    ).digest()
