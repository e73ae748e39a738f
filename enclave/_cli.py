"""``ephemeral-enclave``: the enclave program.

    ephemeral-enclave --mock                       # loopback TCP, mock NSM
    ephemeral-enclave --listen vsock:any:5005      # inside a Nitro enclave

Builds its configuration from flags (defaults from the environment), loads the
model, sets up the NSM seam, and serves sessions until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import ephemeralml as _top_pkg
import ephemeralml.common as _common_pkg
import ephemeralml.enclave as _enclave_pkg
import ephemeralml.host as _host_pkg
from ephemeralml._home import MOCK_MEASUREMENTS, MOCK_ROOT, default_home, write_atomic
from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.common._session import EnclaveIdentity
from ephemeralml.host._transport import Endpoint

from ._libnsm import DEFAULT_LIBNSM, NitroNsm
from ._model import Embedder, ModelFiles
from ._nsm import MockNsm, Nsm, code_digest, mock_measurements
from ._server import IDLE_TIMEOUT_S, MAX_SESSIONS, EnclaveServer, ServerConfig

__all__ = ["EnclaveConfig", "main"]

log = logging.getLogger("ephemeralml.enclave")

MOCK_LISTEN = "tcp:127.0.0.1:5005"
NITRO_LISTEN = "vsock:any:5005"
#: PCR indices the enclave reads at start and copies into receipts and the
#: published measurements.
_PCRS = tuple(range(16))


@dataclass(frozen=True)
class EnclaveConfig:
    mock: bool
    listen: Endpoint
    home: Path
    model_dir: Path | None
    policy_version: int
    max_sessions: int
    idle_timeout_s: float
    nsm_lib: str = DEFAULT_LIBNSM


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ephemeral-enclave",
        description="Serve attested, end-to-end encrypted inference (the enclave program).",
    )
    p.add_argument(
        "--mock",
        action="store_true",
        help="mock mode: loopback TCP instead of vsock and a mock NSM (not a real enclave)",
    )
    p.add_argument(
        "--listen", help=f"endpoint (default {MOCK_LISTEN} with --mock, else {NITRO_LISTEN})"
    )
    p.add_argument(
        "--home", type=Path, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)"
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        help="model directory (model.onnx, tokenizer.json, model.json); default: the packaged all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--policy-version", type=int, default=1, help="policy version to report in receipts"
    )
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS)
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="seconds")
    p.add_argument(
        "--nsm-lib",
        default=os.environ.get("EPHEMERAL_LIBNSM", DEFAULT_LIBNSM),
        help="path of libnsm.so (production only)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    return p


def _config(args: argparse.Namespace) -> EnclaveConfig:
    listen = Endpoint.parse(args.listen or (MOCK_LISTEN if args.mock else NITRO_LISTEN))
    if args.policy_version < 0 or args.max_sessions < 1 or args.idle_timeout <= 0:
        raise ConfigError("--policy-version must be ≥ 0, --max-sessions ≥ 1, --idle-timeout > 0")
    if args.mock and listen.kind != "tcp":
        raise ConfigError("--mock listens on TCP; give --listen HOST:PORT")
    return EnclaveConfig(
        mock=args.mock,
        listen=listen,
        home=args.home or default_home(),
        model_dir=args.model_dir,
        policy_version=args.policy_version,
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        nsm_lib=args.nsm_lib,
    )


def enclave_code_digest() -> bytes:
    """SHA-384 of every project file the enclave program runs.

    That is the enclave and common packages, the transport seam it shares with
    the host (host/), and the top-level package (ephemeralml/): a change to any of
    them changes PCR0 and PCR2, as a rebuilt EIF would.
    """
    dirs = [
        Path(pkg.__file__).resolve().parent
        for pkg in (_top_pkg, _common_pkg, _host_pkg, _enclave_pkg)
        if pkg.__file__ is not None
    ]
    return code_digest(dirs)


def _runtime_id() -> str:
    import onnxruntime

    return f"{platform.python_implementation()}-{platform.python_version()}-onnxruntime-{onnxruntime.__version__}"


def _make_nsm(config: EnclaveConfig, files: ModelFiles) -> Nsm:
    if not config.mock:
        # Production: the real NSM through libnsm.so. Outside a Nitro Enclave this
        # fails with a one-line ConfigError (no /dev/nsm) rather than pretending.
        return NitroNsm.open(config.nsm_lib)
    pcrs = mock_measurements(
        code_digest=enclave_code_digest(), model_digest=files.digest, runtime_id=_runtime_id()
    )
    nsm = MockNsm.load_or_create(config.home / "mock-nsm", pcrs)
    # Publish what a client on this machine needs to trust the mock (ARCHITECTURE:
    # like an EIF build publishes its PCRs): the mock root and the measurements.
    nsm.publish_root(config.home / MOCK_ROOT)
    measurements = {
        "mode": "mock",
        "note": "mock enclave measurements: NOT a real Nitro enclave",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"id": files.model_id, "digest": files.digest.hex()},
        "pcrs": {str(i): nsm.describe_pcr(i).hex() for i in (0, 1, 2, 8)},
    }
    write_atomic(
        config.home / MOCK_MEASUREMENTS, (json.dumps(measurements, indent=2) + "\n").encode()
    )
    return nsm


async def _run(config: EnclaveConfig) -> int:
    files = ModelFiles.from_dir(config.model_dir) if config.model_dir else ModelFiles.default()
    embedder = Embedder(files)
    nsm = _make_nsm(config, files)
    identity = EnclaveIdentity(
        receipt_key=Ed25519PrivateKey.generate(),
        models={files.model_id: files.digest},
        policy_version=config.policy_version,
        mode=nsm.mode,
        pcrs={i: nsm.describe_pcr(i) for i in _PCRS},
    )
    server = EnclaveServer(
        ServerConfig(config.listen, config.max_sessions, config.idle_timeout_s),
        nsm=nsm,
        identity=identity,
        embedders={files.model_id: embedder},
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    where = "MOCK mode: loopback TCP, mock NSM, NOT a real enclave" if config.mock else "Nitro mode"
    print(
        f"ephemeral-enclave: serving {files.model_id} (manifest {files.digest.hex()[:16]}) "
        f"on {server.bound} ({where})",
        file=sys.stderr,
        flush=True,
    )
    serve = asyncio.create_task(server.serve_forever())
    await stop.wait()
    serve.cancel()
    await server.close()
    print("ephemeral-enclave: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="ephemeral-enclave: %(levelname)s %(message)s",
    )
    try:
        config = _config(args)
        return asyncio.run(_run(config))
    except ConfigError as e:
        if args.verbose:
            raise
        print(f"ephemeral-enclave: error: {e}", file=sys.stderr)
        return 2
    except Error as e:
        if args.verbose:
            raise
        print(f"ephemeral-enclave: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
