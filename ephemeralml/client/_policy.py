"""The client's trust policy: which root, which measurements, how old, which models.

Built at the edge (CLI flags or a policy file) and handed to the library. This
module is where the rest of the client and the tests import it from; each part
lives in a module of its own:

==========================  ==========================================================
``_policy_client``          :class:`ClientPolicy` and the three ways to get one; roots
``_policy_document``        :class:`PolicyDocument`: a policy's JSON, parsed (no I/O)
``_policy_signed``          P3: the signed envelope, the policy signers, their keys
``_policy_versions``        P4: :class:`PolicyVersionStore`, the rollback state
``_policy_trust``           :func:`trust_policy`, the one trust choice
==========================  ==========================================================

The layers of a policy file, in the order they run (protocol.md §8):

1. :func:`open_policy` — bytes in: check P3 (the signature, over the bytes received)
   and return the JSON payload. No JSON is parsed before P3 has passed.
2. :meth:`PolicyDocument.from_json` — pure parsing: every field, its type and range.
3. :meth:`ClientPolicy.from_file` — resolves the root (reads files), then check P4
   against a :class:`PolicyVersionStore` (rollback), and records the version only
   once everything else has passed.

P1 (models) and P2 (the enclave's policy version) run later, against the verified
binding of each session: :meth:`ClientPolicy.check_binding`.
"""

from __future__ import annotations

from ._policy_client import MOCK_WARNING, ClientPolicy, aws_root, mock_root, warn_mock
from ._policy_document import MAX_PINNED_DIGESTS, PemRoot, PolicyDocument
from ._policy_signed import (
    POLICY_SIGNERS_FILE,
    generate_signer_key,
    load_policy_signers,
    load_signer_key,
    open_policy,
    parse_signer_keys,
    policy_signer_kid,
    sign_policy,
)
from ._policy_trust import trust_policy
from ._policy_versions import POLICY_VERSIONS_FILE, PolicyVersionStore

__all__ = [
    "MAX_PINNED_DIGESTS",
    "MOCK_WARNING",
    "POLICY_SIGNERS_FILE",
    "POLICY_VERSIONS_FILE",
    "ClientPolicy",
    "PemRoot",
    "PolicyDocument",
    "PolicyVersionStore",
    "aws_root",
    "generate_signer_key",
    "load_policy_signers",
    "load_signer_key",
    "mock_root",
    "open_policy",
    "parse_signer_keys",
    "policy_signer_kid",
    "sign_policy",
    "trust_policy",
    "warn_mock",
]
