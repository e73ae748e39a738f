"""ephemeralml.client: verify the enclave, open an encrypted session, verify receipts.

    from ephemeralml.client import connect, trust_policy
    policy = trust_policy(mock=True)            # or policy="policy.cose", as the CLI's flags
    with connect("127.0.0.1:5000", policy=policy) as s:
        (result,) = s.embed(["some text"])

Every verified receipt goes to the audit log, ``$EPHEMERALML_HOME/audit.db`` by
default (``audit=Path(...)`` another file, ``audit=False`` none): a hash-chained
SQLite database that ``ephemeral audit`` re-verifies offline.
"""

from ._api import (
    DEFAULT_ADDRESS,
    DEFAULT_MODEL,
    Embeddings,
    EmbedIncomplete,
    PeerReportedError,
    Session,
    connect,
)
from ._audit import AuditLog
from ._offline import StoredReceipt, verify_stored_receipt
from ._policy import ClientPolicy, trust_policy

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MODEL",
    "AuditLog",
    "ClientPolicy",
    "EmbedIncomplete",
    "Embeddings",
    "PeerReportedError",
    "Session",
    "StoredReceipt",
    "connect",
    "trust_policy",
    "verify_stored_receipt",
]
