"""A real client, run as its own (memory-limited) process, against hostile addresses.

``python -m tests.adversarial._client_worker ADDRESS...`` connects to each address in
turn (mock trust from ``$EPHEMERALML_HOME``), asks for one embedding, and prints one
JSON line per address: ``{"address", "type", "message"}`` (``type`` "ok" when it was
served). An input that ends this process shows as missing lines; the caller reads
which address it was from the last line printed.
"""

from __future__ import annotations

import json
import sys

from ephemeralml.client._api import connect
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._errors import Error
from ephemeralml.runtime._home import default_home

#: Each connect and request; the relays in front answer in milliseconds.
TIMEOUT_S = 10.0


def main(addresses: list[str]) -> int:
    policy = ClientPolicy.unsafe_mock(default_home(), warn=False)
    for address in addresses:
        try:
            with connect(address, policy=policy, timeout=TIMEOUT_S) as s:
                s.embed(["a client under attack"])
            out = {"address": address, "type": "ok", "message": ""}
        except Error as e:
            out = {"address": address, "type": type(e).__name__, "message": str(e)}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
