"""Build step of docker/Dockerfile.enclave: the enclave image's measured configuration.

    python enclave_config.py CONFIG_DIR DEFAULT_CA_BUNDLE OUT_DIR

Reads the model-owner keys from ``$OWNER_KEYS`` (the content of a model-owners file),
else ``CONFIG_DIR/model-owners.txt``; the model floors from ``$MODEL_FLOORS``, else
``CONFIG_DIR/model-floors.txt``, else none; the CA bundle the enclave trusts for
KMS's TLS certificate from ``CONFIG_DIR/ca-bundle.pem``, else ``DEFAULT_CA_BUNDLE``
(the pinned base image's). Each is parsed by the enclave's own loaders
(``ephemeralml.enclave._measure``), so a file the enclave would refuse at boot fails
the build instead, and written to ``OUT_DIR`` in canonical form:

* ``model-owners.txt``: the keys, lowercase hex, sorted, one a line, no comments;
* ``model-floors.txt``: ``MODEL_ID MIN_RELEASE`` lines sorted by id; not written when
  there are no floors (an absent file is how the enclave reads "no floors");
* ``ca-bundle.pem``: the bundle's bytes, unchanged.

Canonical, so that comments, spacing and line order never change PCR0: only the key
set, the floors and the CA bundle do. Prints what it wrote and the configuration
digest (``image_config_digest``, what a mock enclave folds into its PCR0; a Nitro
PCR0 covers the files themselves).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import sys
import tempfile
from pathlib import Path

OWNERS = "model-owners.txt"
FLOORS = "model-floors.txt"
CA_BUNDLE = "ca-bundle.pem"
#: A CA bundle is a few hundred KiB; more is a mistake.
MAX_CA_BUNDLE_BYTES = 1024 * 1024


class BuildError(Exception):
    """A configuration the image must not be built with; one line for the build log."""


def _text(env: str, path: Path) -> tuple[str, str] | None:
    """(text, where it came from) from the build arg, else the file, else None."""
    value = os.environ.get(env, "")
    if value.strip():
        return value, f"build arg {env}"
    if path.is_file():
        return path.read_text(encoding="ascii"), str(path)
    return None


def _parse(text: str, loader_name: str) -> object:
    """Run the enclave's own loader on ``text`` (the loaders read files)."""
    from ephemeralml.common._errors import ConfigError
    from ephemeralml.enclave import _measure

    loader = getattr(_measure, loader_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_text(text, encoding="ascii")
        try:
            return loader(path)
        except ConfigError as e:
            raise BuildError(str(e).replace(str(path), "input")) from e


def owner_keys_file(config: Path) -> tuple[str, list[bytes], str]:
    got = _text("OWNER_KEYS", config / OWNERS)
    if got is None:
        raise BuildError(
            f"no model-owner keys: give the build arg OWNER_KEYS (the content of a "
            f"model-owners file) or put {OWNERS} in the enclave-config folder "
            "(scripts/build_eif.sh --owner-keys FILE)"
        )
    text, where = got
    try:
        keys = _parse(text, "load_owner_keys")
    except UnicodeEncodeError as e:
        raise BuildError(f"{where}: model-owner keys must be ASCII") from e
    assert isinstance(keys, dict)
    raw = sorted(keys.values())
    return "".join(f"{k.hex()}\n" for k in raw), raw, where


def floors_file(config: Path) -> tuple[str | None, dict[str, int], str]:
    got = _text("MODEL_FLOORS", config / FLOORS)
    if got is None:
        return None, {}, "none given"
    text, where = got
    try:
        floors = _parse(text, "load_model_floors")
    except UnicodeEncodeError as e:
        raise BuildError(f"{where}: model floors must be ASCII") from e
    assert isinstance(floors, dict)
    if not floors:
        return None, {}, where
    return "".join(f"{m} {floors[m]}\n" for m in sorted(floors)), floors, where


def ca_bundle(config: Path, default: Path) -> tuple[bytes, int, str]:
    path = config / CA_BUNDLE if (config / CA_BUNDLE).is_file() else default
    data = path.read_bytes()
    if len(data) > MAX_CA_BUNDLE_BYTES:
        raise BuildError(f"{path}: a CA bundle over {MAX_CA_BUNDLE_BYTES} bytes")
    # Loaded as botocore will load it (OpenSSL through the ssl module).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as e:
        raise BuildError(f"{path}: not a PEM bundle of CA certificates ({e})") from e
    count = len(context.get_ca_certs())
    if not count:
        raise BuildError(f"{path}: no CA certificate in the bundle")
    return data, count, str(path)


def write(config: Path, default_ca: Path, out: Path) -> list[str]:
    from ephemeralml.common._bundle import owner_key_id
    from ephemeralml.enclave._measure import image_config_digest

    owners, keys, owners_from = owner_keys_file(config)
    floors_text, floors, floors_from = floors_file(config)
    bundle, n_certs, bundle_from = ca_bundle(config, default_ca)
    out.mkdir(parents=True, exist_ok=True)
    (out / OWNERS).write_text(owners, encoding="ascii")
    if floors_text is not None:
        (out / FLOORS).write_text(floors_text, encoding="ascii")
    elif (out / FLOORS).exists():
        (out / FLOORS).unlink()
    (out / CA_BUNDLE).write_bytes(bundle)
    lines = [f"{OWNERS}: {len(keys)} key(s) from {owners_from}"]
    lines += [f"  owner {owner_key_id(k).hex()[:16]} {k.hex()}" for k in keys]
    lines.append(f"{FLOORS}: {len(floors)} floor(s) from {floors_from}")
    lines += [f"  floor {m} {floors[m]}" for m in sorted(floors)]
    lines.append(
        f"{CA_BUNDLE}: {n_certs} certificate(s) from {bundle_from}, "
        f"sha256 {hashlib.sha256(bundle).hexdigest()}"
    )
    lines.append(f"image config digest {image_config_digest(keys, floors).hex()}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} CONFIG_DIR DEFAULT_CA_BUNDLE OUT_DIR", file=sys.stderr)
        return 2
    try:
        lines = write(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    except (BuildError, OSError) as e:
        print(f"enclave config: error: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"enclave config: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
