"""``ephemeral web``: serve the browser client's page from this machine (see :mod:`._web`).

It checks the trust choice first (``--mock`` or ``--policy``, as ``ephemeral embed``
does), then serves the built page on loopback and prints one readiness line,
``ephemeral: ready {"listen": EP, "url": URL, "ws": WS_URL}``, until SIGINT or SIGTERM
(exit 0). The page then verifies the enclave itself, in the browser. Needs the built
page (scripts/_web.sh) and the ``proxy`` extra (Starlette and uvicorn).
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._runner import ready_line
from ephemeralml.runtime._transport import Endpoint

from ._cli_common import PROG, trust_from_args
from ._cli_proxy import bind_loopback, loopback_endpoint, url_host

__all__ = ["DEFAULT_WEB_LISTEN", "cmd_web"]

DEFAULT_WEB_LISTEN = "127.0.0.1:8081"


def _ws_url(args: argparse.Namespace) -> str:
    url = args.ws or f"ws://127.0.0.1:{Ports.choose(args.base_port, os.environ).ws}"
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"--ws {url}: not a ws:// or wss:// URL of the host's --ws-listen")
    return url


def cmd_web(args: argparse.Namespace) -> int:
    try:
        from ._proxy import serve_on
        from ._web import build_web_app, page_dir
    except ImportError as e:
        raise ConfigError(
            f"ephemeral web needs its web server ({e.name} is not installed): "
            "pip install 'ephemeralml[proxy]'"
        ) from e
    listen = loopback_endpoint(args.listen, what="the page")
    ws_url = _ws_url(args)
    pages = page_dir(args.page_dir)
    policy = trust_from_args(args, offline=False)
    app = build_web_app(pages=pages, policy=policy, ws_url=ws_url)
    sock = bind_loopback(listen)
    bound = Endpoint.tcp(listen.host or "127.0.0.1", sock.getsockname()[1])
    url = f"http://{url_host(bound)}/"
    print(
        f"{PROG}: web: the page at {url} (from {pages}); it verifies the enclave behind "
        f"{ws_url} itself, with the policy {policy.source}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    print(ready_line(PROG, listen=str(bound), url=url, ws=ws_url), file=sys.stderr, flush=True)
    received = serve_on(app, sock, limit_concurrency=64)
    stopped = ", ".join(received) or "closed"
    print(f"{PROG}: web: stopped ({stopped})", file=sys.stderr, flush=True)
    return 0
