"""ephemeralml.client: verify the enclave, open an encrypted session, verify receipts.

    from ephemeralml.client import ClientPolicy, connect
    with connect("127.0.0.1:5000", policy=ClientPolicy.unsafe_mock()) as s:
        (result,) = s.embed(["some text"])
"""

from ._api import DEFAULT_ADDRESS, DEFAULT_MODEL, Embeddings, Session, connect
from ._policy import ClientPolicy

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_MODEL", "ClientPolicy", "Embeddings", "Session", "connect"]
