"""``ephemeral policy from-measurements``: a client policy from published measurements.

An enclave image's build publishes its PCRs; a client trusts an enclave by pinning
them in a policy (protocol.md §8). This turns what was published into a
``policy.json`` that :meth:`ClientPolicy.from_file` accepts and that
``ephemeral policy sign`` signs unchanged. Two shapes of input, told apart by their
keys:

* what a mock enclave publishes (``$EPHEMERALML_HOME/published/measurements.json``,
  ``mock/_profiles.py::publish_mock``), and what a build pipeline may write the same
  way: ``{"mode": "mock"|"nitro", "pcrs": {"0": HEX, "1": HEX, ...}, "note": TEXT,
  "written": TIME}`` (``note`` and ``written`` optional, nothing else allowed);
* what ``nitro-cli build-enclave`` prints (and ``nitro-cli describe-eif``):
  ``{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": HEX, "PCR1": HEX,
  "PCR2": HEX[, "PCR8": HEX]}, ...}``; mode ``nitro``. Other top-level keys (the
  rest of ``describe-eif``'s answer) are ignored; inside ``Measurements`` nothing
  but the hash algorithm and PCRs is allowed.

Either way every PCR is 96 hex (SHA-384), PCR0, PCR1 and PCR2 must be there, and an
all-zero PCR0 (a debug-mode enclave, which proves nothing about its code) is
refused. Several files make several allowed sets (a rolling upgrade pins the old
image and the new), all of one mode.

The root: ``mock`` measurements can only be attested by the local mock root, so the
policy says ``"root": "mock"`` and the command warns loudly; ``nitro`` ones get the
built-in AWS Nitro root, or ``--root PEM`` as ``{"pem": PATH, "sha256": HEX}`` (the
path relative to the policy file, the pin so that a signed policy covers the file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._errors import ConfigError
from ephemeralml.common._store import is_model_id
from ephemeralml.runtime._home import MOCK_MEASUREMENTS
from ephemeralml.runtime._strict import loads_json

from ._policy import MAX_PINNED_DIGESTS, PolicyDocument

__all__ = [
    "MOCK_POLICY_WARNING",
    "MadePolicy",
    "Published",
    "make_policy",
    "parse_measurements",
    "parse_model_pins",
    "read_measurements",
    "summary_lines",
    "write_policy",
]

MOCK_POLICY_WARNING = (
    "WARNING: {files} hold MOCK measurements: the policy trusts the local mock root "
    '("root": "mock"). A mock enclave proves nothing: the machine\'s owner can read '
    "everything. Use it for development only."
)

#: Published measurements are a few hundred bytes; nitro-cli's answers a few KiB.
MAX_MEASUREMENTS_BYTES = 64 * 1024
#: The PCRs a policy made here always pins: the image, the kernel and boot, the
#: application (what the KMS key policy pins too).
REQUIRED_PCRS = (0, 1, 2)
_MODES = ("mock", "nitro")
_OURS = frozenset({"mode", "pcrs", "note", "written"})
_HEX96 = re.compile(r"^[0-9a-fA-F]{96}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Published:
    """One file of measurements: its mode, its shape and its PCRs."""

    where: str
    mode: str  # "mock" or "nitro"
    shape: str  # "ephemeralml" or "nitro-cli"
    pcrs: dict[int, str]  # index → 96 lowercase hex

    def as_policy_set(self) -> dict[str, str]:
        return {f"PCR{i}": v for i, v in sorted(self.pcrs.items())}


def _pcrs(obj: dict[str, Any], where: str, *, skip: frozenset[str] = frozenset()) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, value in obj.items():
        if key in skip:
            continue
        name = key.upper().removeprefix("PCR") if isinstance(key, str) else ""
        if not name.isdigit() or str(int(name)) != name or not 0 <= int(name) <= 31:
            raise ConfigError(f"measurements {where}: {key!r} is not a PCR name (PCR0..PCR31)")
        i = int(name)
        if i in out:
            raise ConfigError(f"measurements {where}: PCR{i} is named twice")
        if not isinstance(value, str) or not _HEX96.match(value):
            raise ConfigError(f"measurements {where}: PCR{i} must be 96 hex digits (SHA-384)")
        out[i] = value.lower()
    for i in REQUIRED_PCRS:
        if i not in out:
            raise ConfigError(
                f"measurements {where}: PCR{i} is missing (a policy pins at least PCR0, PCR1 "
                "and PCR2)"
            )
    if out[0] == "0" * 96:
        raise ConfigError(
            f"measurements {where}: PCR0 is all zeros, a debug-mode enclave (it proves "
            "nothing about its code)"
        )
    return out


def parse_measurements(raw: bytes, where: str) -> Published:
    """Either shape of the module docstring; exact one-line :class:`ConfigError` otherwise."""
    if len(raw) > MAX_MEASUREMENTS_BYTES:
        raise ConfigError(f"measurements {where} are over {MAX_MEASUREMENTS_BYTES} bytes")
    try:
        doc = loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"measurements {where} are not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"measurements {where}: not a JSON object")
    if "Measurements" in doc and "pcrs" in doc:
        raise ConfigError(f'measurements {where}: both "Measurements" and "pcrs"; give one shape')
    if "Measurements" in doc:
        m = doc["Measurements"]
        if not isinstance(m, dict):
            raise ConfigError(f"measurements {where}: Measurements must be an object")
        algorithm = m.get("HashAlgorithm")
        if not isinstance(algorithm, str):
            raise ConfigError(f"measurements {where}: Measurements.HashAlgorithm is missing")
        if algorithm.split(" ", 1)[0] != "Sha384":
            raise ConfigError(
                f"measurements {where}: HashAlgorithm {algorithm[:40]!r} is not Sha384"
            )
        return Published(
            where, "nitro", "nitro-cli", _pcrs(m, where, skip=frozenset({"HashAlgorithm"}))
        )
    if "pcrs" in doc:
        if unknown := set(doc) - _OURS:
            raise ConfigError(f"measurements {where}: unknown fields {sorted(unknown)}")
        mode = doc.get("mode")
        if mode not in _MODES:
            raise ConfigError(f'measurements {where}: mode must be "mock" or "nitro"')
        for name in ("note", "written"):
            if name in doc and not isinstance(doc[name], str):
                raise ConfigError(f"measurements {where}: {name} must be text")
        if not isinstance(doc["pcrs"], dict):
            raise ConfigError(f"measurements {where}: pcrs must be an object of PCR: hex")
        return Published(where, str(mode), "ephemeralml", _pcrs(doc["pcrs"], where))
    raise ConfigError(
        f'measurements {where}: neither published measurements ({{"mode", "pcrs"}}) nor '
        'nitro-cli build-enclave output ({"Measurements"})'
    )


def read_measurements(paths: Sequence[Path], home: Path) -> list[Published]:
    """The files given, else the mock enclave's published measurements in ``home``."""
    default = not paths
    out = []
    for path in paths or [home / MOCK_MEASUREMENTS]:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MEASUREMENTS_BYTES + 1)
        except FileNotFoundError as e:
            if default:
                raise ConfigError(
                    f"no published measurements at {path}: start `ephemeral-enclave --mock` "
                    "first (it publishes them), or give the file nitro-cli build-enclave wrote"
                ) from e
            raise ConfigError(f"measurements {path} do not exist") from e
        except OSError as e:
            raise ConfigError(f"cannot read measurements {path}: {e.strerror}") from e
        out.append(parse_measurements(raw, str(path)))
    modes = sorted({p.mode for p in out})
    if len(modes) > 1:
        mock = next(p.where for p in out if p.mode == "mock")
        nitro = next(p.where for p in out if p.mode == "nitro")
        raise ConfigError(
            f"measurements: {mock} is mock and {nitro} is nitro; one policy trusts one root"
        )
    return out


def parse_model_pins(items: Sequence[str]) -> dict[str, list[str]]:
    """``--model ID=DIGEST`` values → id → digests (lowercase hex, in order, no repeats)."""
    out: dict[str, list[str]] = {}
    for item in items:
        model_id, sep, digest = item.partition("=")
        model_id, digest = model_id.strip(), digest.strip().lower()
        if not sep or not is_model_id(model_id) or not _HEX64.match(digest):
            raise ConfigError(
                f"--model {item!r}: give ID=DIGEST, the model id and its 64-hex manifest "
                "digest (`ephemeral model show BUNDLE` prints it)"
            )
        pins = out.setdefault(model_id, [])
        if digest not in pins:
            pins.append(digest)
        if len(pins) > MAX_PINNED_DIGESTS:
            raise ConfigError(f"--model {model_id}: at most {MAX_PINNED_DIGESTS} digests a model")
    return out


@dataclass(frozen=True)
class MadePolicy:
    document: dict[str, Any]
    data: bytes  # the JSON written: what `policy sign` signs unchanged
    mode: str
    sets: list[Published]
    root_path: Path | None  # --root's file, resolved


def make_policy(
    sets: list[Published],
    *,
    out: Path | None,
    root_pem: Path | None = None,
    models: dict[str, list[str]] | None = None,
    version: int = 1,
) -> MadePolicy:
    """The policy's JSON for ``sets`` (at least one, one mode). ``out`` (None: stdout)
    is where it will be written: a ``--root`` path is made relative to its folder.
    Checked with the client's own parser, as a signed policy, before it is returned."""
    assert sets
    mode = sets[0].mode
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError("--version must be an integer ≥ 0")
    root: Any
    root_path = None
    if mode == "mock":
        if root_pem is not None:
            raise ConfigError(
                f"--root: {', '.join(p.where for p in sets)} hold MOCK measurements, which "
                "only the local mock root attests; drop --root"
            )
        root = "mock"
    elif root_pem is None:
        root = "aws-nitro"
    else:
        root_path = root_pem.resolve()
        try:
            cert = root_path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read --root {root_pem}: {e.strerror}") from e
        trusted = TrustedRoot.from_pem_or_der(cert, name=str(root_pem))
        base = (out.parent if out is not None else Path.cwd()).resolve()
        root = {"pem": os.path.relpath(root_path, base), "sha256": trusted.fingerprint}
    unique: list[dict[str, str]] = []
    for p in sets:
        if (s := p.as_policy_set()) not in unique:
            unique.append(s)
    doc: dict[str, Any] = {"version": version, "root": root, "measurements": unique}
    if models:
        doc["models"] = {k: v[0] if len(v) == 1 else v for k, v in models.items()}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    # What the client will do with it, as a signed policy (the stricter reading).
    PolicyDocument.from_json(data, where=str(out or "-"), signed=True)
    return MadePolicy(doc, data, mode, sets, root_path)


def write_policy(path: Path, data: bytes, *, force: bool) -> None:
    """Write atomically (a temporary file, synced, then linked or renamed into place).
    Without ``force`` an existing file is never replaced, even one that appears
    between the check and the write."""
    if not force and (path.exists() or path.is_symlink()):
        raise ConfigError(f"{path} exists; give --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # never replaces: FileExistsError if it appeared meanwhile
    except FileExistsError as e:
        raise ConfigError(f"{path} exists; give --force to replace it") from e
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def summary_lines(made: MadePolicy, out: str) -> list[str]:
    d = made.document
    root = d["root"]
    if root == "mock":
        root_text = "mock (MOCK: a mock enclave proves nothing)"
    elif root == "aws-nitro":
        root_text = "aws-nitro (the built-in AWS Nitro Enclaves root, pinned by fingerprint)"
    else:
        root_text = f"{root['pem']} sha256 {root['sha256']}"
    lines = [f"policy version {d['version']} -> {out}", f"  root          {root_text}"]
    for i, s in enumerate(d["measurements"]):
        lines.append(f"  set {i:<2}        {', '.join(s)}")
    for p in made.sets:
        lines.append(f"  from          {p.where} ({p.mode}, {p.shape})")
    models = d.get("models")
    if not models:
        lines.append("  models        any attested model (no --model pinned)")
    for k, v in (models or {}).items():
        for dg in [v] if isinstance(v, str) else v:
            lines.append(f"  model         {k} manifest {dg}")
    return lines
