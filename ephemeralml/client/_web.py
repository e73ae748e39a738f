"""``ephemeral web``: the browser client's page, served from this machine, never the host.

The page runs the client protocol itself (web/, bundled at setup by scripts/_web.sh:
attestation, HPKE session and receipts verified in the browser) and talks to the
enclave through the host's WebSocket door (``ephemeral-host --ws-listen``). What it
must not get from the untrusted host is its own code and its trust policy: this
server hands it both, from files on this machine:

* ``/``, ``/app.js``, ``/style.css``: the built page (``web/dist/``);
* ``/config.json``: the WebSocket URL and the policy the user chose (``--mock``,
  ``--policy``), checked here first (signature P3, rollback P4, as ``ephemeral embed``
  does) and handed over as §8.1 JSON with the root it names;
* ``/root.pem``: a custom root, when the policy names one.

Every answer carries a Content-Security-Policy that lets the page load only its own
files and connect only to that WebSocket; loopback only, like the proxy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ephemeralml.common._errors import ConfigError
from ephemeralml.common._trust import PcrAllowlist

from ._policy import ClientPolicy

__all__ = ["PAGE_FILES", "build_web_app", "page_dir", "page_policy"]

#: What the page is made of (scripts/_web.sh builds them into web/dist/).
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_AWS_ROOT_NAME = "aws-nitro-root-g1"


def page_dir(given: Path | None = None) -> Path:
    """Where the built page is: ``given``, else the source tree's ``web/dist``."""
    where = given or Path(__file__).resolve().parents[2] / "web" / "dist"
    missing = [n for n in PAGE_FILES if not (where / n).is_file()]
    if missing:
        raise ConfigError(
            f"the page is not built in {where} (no {', '.join(missing)}): run scripts/_web.sh "
            "(it needs node >= 20 and npm)"
        )
    return where


def page_policy(policy: ClientPolicy) -> tuple[dict[str, Any], str | None, bytes | None]:
    """The policy as the page reads it (§8.1 JSON), the mock root's PEM (for a mock
    policy) and a custom root's PEM (served as ``/root.pem``)."""
    m = policy.attestation.measurements
    if not isinstance(m, PcrAllowlist):
        raise ConfigError("the page needs a policy that lists the enclave's measurements")
    root = policy.attestation.root
    pem = x509.load_der_x509_certificate(root.certificate_der).public_bytes(
        serialization.Encoding.PEM
    )
    mock_root: str | None = None
    custom: bytes | None = None
    root_spec: Any
    if root.is_mock:
        root_spec, mock_root = "mock", pem.decode("ascii")
    elif root.name == _AWS_ROOT_NAME:
        root_spec = "aws-nitro"
    else:
        root_spec, custom = {"pem": "root.pem", "sha256": root.fingerprint}, pem
    doc: dict[str, Any] = {
        "version": policy.version,
        "root": root_spec,
        "max_age_s": policy.attestation.max_age_s,
        "measurements": [{f"PCR{i}": v.hex() for i, v in sorted(s.items())} for s in m.allowed],
        "allow_debug": m.allow_debug,
        "min_enclave_policy_version": policy.min_enclave_policy_version,
        "session_mode": policy.session_mode,
    }
    if policy.models is not None:
        doc["models"] = {k: sorted(d.hex() for d in v) for k, v in policy.models.items()}
    if policy.owner_keys is not None:
        doc["owner_keys"] = [k.hex() for k in policy.owner_keys.values()]
    return doc, mock_root, custom


def build_web_app(*, pages: Path, policy: ClientPolicy, ws_url: str) -> Starlette:
    doc, mock_root, custom_root = page_policy(policy)
    config = {
        "ws": ws_url,
        "policy": json.dumps(doc),
        "where": f"{policy.source} (from ephemeral web)",
        "mock_root": mock_root,
    }
    files = {name: (pages / name).read_bytes() for name in PAGE_FILES}
    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; "
            f"connect-src 'self' {ws_url}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    def page_file(name: str) -> Any:
        async def serve(request: Request) -> Response:
            return Response(files[name], media_type=PAGE_FILES[name], headers=headers)

        return serve

    async def config_json(request: Request) -> Response:
        return JSONResponse(config, headers=headers)

    async def root_pem(request: Request) -> Response:
        if custom_root is None:
            return Response("no custom root\n", status_code=404, headers=headers)
        return Response(custom_root, media_type="application/x-pem-file", headers=headers)

    async def not_found(request: Request, exc: Exception) -> Response:
        return Response("not found\n", status_code=404, headers=headers)

    return Starlette(
        routes=[
            Route("/", page_file("index.html")),
            Route("/app.js", page_file("app.js")),
            Route("/style.css", page_file("style.css")),
            Route("/config.json", config_json),
            Route("/root.pem", root_pem),
        ],
        exception_handlers={404: not_found},
    )
