"""Runs inside ``unshare -n``: a network namespace like a Nitro enclave's (loopback
down, no route, no DNS), whose only way out is a Unix socket standing for vsock.

Argument: a JSON object with ``egress`` (the host's egress proxy, ``unix:PATH``),
``nsm_state``, ``pcrs`` (hex by index), ``ca_bundle``, ``credentials`` (the enclave
role's), ``key_id``, ``wrapped`` (hex) and ``region``. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sys
import threading
from typing import Any


def _unreachable() -> str:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 9))
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()
    return "reachable"


def _dns(name: str) -> str:
    try:
        socket.getaddrinfo(name, 443)
    except OSError as e:
        return type(e).__name__
    return "resolved"


def main(arg: dict[str, Any]) -> dict[str, Any]:
    import boto3

    from ephemeralml.enclave._boot import loopback_up, seed_rng
    from ephemeralml.enclave._keyrelease import KmsKeyRelease, kms_client_config
    from ephemeralml.mock._nsm import MockNsm
    from ephemeralml.runtime._relay import Relay, RelayConfig
    from ephemeralml.runtime._transport import Endpoint

    out: dict[str, Any] = {"before_lo": _unreachable(), "dns": _dns(f"kms.{arg['region']}.amazonaws.com")}
    out["lo_brought_up"] = loopback_up()
    out["after_lo"] = _unreachable()

    # The enclave's loopback forwarder: boto3's https_proxy, relayed to the host's egress.
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    relay = Relay(RelayConfig(Endpoint.parse("tcp:127.0.0.1:0"), (Endpoint.parse(arg["egress"]),), framed=False))
    asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
    proxy = f"http://127.0.0.1:{relay.bound.port}"

    pcrs = {int(i): bytes.fromhex(v) for i, v in arg["pcrs"].items()}
    nsm = MockNsm.load_or_create(__import__("pathlib").Path(arg["nsm_state"]), pcrs)
    out["seeded"] = seed_rng(nsm)
    kms = boto3.client(
        "kms", region_name=arg["region"], endpoint_url=f"https://kms.{arg['region']}.amazonaws.com",
        config=kms_client_config(proxy), verify=arg["ca_bundle"], **arg["credentials"],
    )  # fmt: skip
    released = KmsKeyRelease(nsm, kms).release(
        bytes.fromhex(arg["wrapped"]), kms_key_id=arg["key_id"], what="model m"
    )
    out["data_key_sha256"] = hashlib.sha256(bytes(released.data_key)).hexdigest()

    # Anything else through the same way out is refused by the host.
    with socket.create_connection(("127.0.0.1", relay.bound.port), timeout=10) as s:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        out["other_target"] = s.recv(4096).decode().splitlines()[-1]
    asyncio.run_coroutine_threadsafe(relay.close(), loop).result(10)
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
