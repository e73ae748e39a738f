"""A local AWS KMS for mock mode: real HTTP, the KMS JSON 1.1 protocol, key policies.

The enclave releases its model key the way it does on AWS, with boto3's ``Decrypt``
and a ``Recipient`` (its attestation document); in mock mode boto3's ``endpoint_url``
points here instead. What this server does, and how it differs from AWS KMS:

Protocol
    ``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a JSON body;
    responses are JSON (``application/x-amz-json-1.1``), errors are HTTP 400 with
    ``{"__type": "<Code>", "message": "..."}`` (what botocore turns into a
    ``ClientError`` with that code), and every response carries an
    ``x-amzn-RequestId``. Binary fields are base64 in JSON, as botocore sends them.

Authentication: SigV4, as AWS checks it (:func:`verify_sigv4`)
    Every request must carry an ``Authorization`` header signed with SigV4 by one of
    the mock's principals, whose credentials (access key id, secret, session token)
    the server makes on first start and keeps in ``state_dir/credentials.json``
    (0600). The signature is recomputed with botocore's own SigV4 code over the
    method, path, query, the headers named in ``SignedHeaders`` and the SHA-256 of the
    body received, and compared in constant time. Failures answer as KMS does
    (HTTP 400): no header, ``MissingAuthenticationTokenException``; a malformed one,
    ``IncompleteSignatureException``; an unknown access key id or a wrong session
    token, ``UnrecognizedClientException``; a bad signature, a credential scoped to
    another region or service, or an ``X-Amz-Date`` more than
    :data:`MAX_CLOCK_SKEW_S` from the server's clock, ``InvalidSignatureException``.

Principals (:data:`PRINCIPALS`)
    Three roles of the one account, each with its own credentials: the model owner
    (``ephemeralml-model-owner``: its IAM policy allows ``kms:*``), the host
    (``ephemeralml-host``) and the enclave (``ephemeralml-enclave``: on AWS the
    parent instance's role, whose credentials the host hands to the enclave; its
    IAM policy allows ``kms:Decrypt``, as an instance role's usually does). A key
    policy statement naming a role applies to that role; one naming the account
    (``arn:aws:iam::111122223333:root``) applies to a role only where the role's IAM
    policy also allows the action, as on AWS. So a key policy that names no account
    and gives ``kms:Decrypt`` to the enclave role only under
    ``kms:RecipientAttestation`` conditions (:mod:`ephemeralml.mock._provision`)
    leaves the host, holding every credential the enclave has, no way to decrypt
    or to rewrite the policy.

Operations
    ``CreateKey`` (symmetric ``ENCRYPT_DECRYPT`` keys only), ``DescribeKey``,
    ``GetKeyPolicy``, ``PutKeyPolicy``, ``Encrypt``, ``Decrypt`` and
    ``GenerateDataKey`` (both with an optional ``Recipient``). Keys are named by key
    id or key ARN; aliases are not supported (``NotFoundException``).

Key policies (:func:`evaluate_policy`)
    Every operation on a key except ``CreateKey`` is authorized by the key's policy,
    as on AWS, with a scoped-down evaluator: ``Effect``, ``Principal`` (``*``, an
    account, a role ARN), ``Action`` and ``Resource`` with ``*``/``?`` wildcards, and
    ``Condition`` with the ``String*`` operators and their ``IfExists`` forms. An
    explicit ``Deny`` wins; no matching ``Allow`` denies. A key created without a
    policy gets AWS's default key policy, which allows ``kms:*`` to the account: that
    is, to every role whose IAM policy allows the action (the owner for everything,
    the enclave and host roles for ``kms:Decrypt`` even without a Recipient), so it
    is permissive on purpose, like AWS's.

Recipient (``Decrypt``, ``GenerateDataKey``)
    The document is verified with :func:`verify_attestation` under the configured
    root: COSE signature, chain to the root, every certificate valid now. **Not its
    freshness**: AWS KMS does not check a Recipient document's age (a replayed
    document is accepted; FACTS.md), so neither does the mock
    (:data:`RECIPIENT_MAX_AGE_S`). Its ``public_key`` must be an RSA
    SubjectPublicKeyInfo. The verified PCRs become the condition keys
    ``kms:RecipientAttestation:ImageSha384`` (PCR0) and
    ``kms:RecipientAttestation:PCR<n>``, lowercase hex; without a Recipient those
    keys are absent from the request context, so an ``Allow`` conditioned on them
    never lets the host decrypt. The answer is ``CiphertextForRecipient`` (a CMS
    envelope built by :func:`build_recipient_envelope`) and no ``Plaintext``.

Ciphertext blobs (:data:`BLOB_VERSION`): the mock's own format, not AWS's::

    0x01 | key id (16 bytes, the key's UUID) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

    with AAD = ``b"ephemeralml-mock-kms-blob"`` | version | key id |
    canonical JSON of the encryption context (sorted keys). A changed byte, a
    different encryption context or a blob of another key store fails with
    ``InvalidCiphertextException``.

State
    ``state_dir/credentials.json``: the principals' credentials (0600), kept across
    restarts. ``state_dir/keys/<key id>.json``: key material (256-bit AES), metadata, policy;
    folder 0700, files 0600, each written atomically, all loaded at start, so a
    restart loses nothing. Logs name operations, key ids, request ids and outcomes,
    never keys, plaintexts or request bodies.

Modules
    This module is the public face (every name below is importable from here) and the
    command line, ``python -m ephemeralml.mock._kms`` (:func:`main`). The work is done
    in :mod:`._kms_requests` (the protocol's errors and checked request fields),
    :mod:`._kms_principals` (the roles and their credentials), :mod:`._kms_auth`
    (SigV4), :mod:`._kms_policy` (key policies), :mod:`._kms_keys` (the key store and
    ciphertext blobs), :mod:`._kms_service` (the operations) and :mod:`._kms_server`
    (HTTP and :class:`MockKmsServer`), each importing only those before it.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ephemeralml.runtime._home import MOCK_KMS_STATE, MOCK_ROOT, default_home
from ephemeralml.runtime._runner import Parser, ready_line, run_main
from ephemeralml.runtime._transport import Endpoint

from ..common._attestation import AWS_NITRO_ROOT_SHA256, TrustedRoot
from ..common._errors import ConfigError
from ._kms_auth import MAX_CLOCK_SKEW_S, verify_sigv4
from ._kms_keys import BLOB_VERSION
from ._kms_policy import (
    MAX_KEY_POLICY_BYTES,
    Decision,
    MalformedPolicyError,
    default_key_policy,
    evaluate_policy,
    policy_decision,
    validate_policy,
)
from ._kms_principals import (
    _CREDENTIALS_FILE,
    ACCOUNT_ID,
    ACCOUNT_ROOT,
    ENCLAVE,
    HOST,
    MODEL_OWNER,
    PRINCIPALS,
    REGION,
    MockCredentials,
    MockPrincipal,
    load_or_create_credentials,
)
from ._kms_server import IDLE_TIMEOUT_S, MAX_REQUEST_BYTES, MockKmsServer
from ._kms_service import RECIPIENT_MAX_AGE_S, utc_now

__all__ = [
    "ACCOUNT_ID",
    "ACCOUNT_ROOT",
    "BLOB_VERSION",
    "DEFAULT_LISTEN",
    "ENCLAVE",
    "HOST",
    "IDLE_TIMEOUT_S",
    "MAX_CLOCK_SKEW_S",
    "MAX_KEY_POLICY_BYTES",
    "MAX_REQUEST_BYTES",
    "MODEL_OWNER",
    "PRINCIPALS",
    "RECIPIENT_MAX_AGE_S",
    "REGION",
    "Decision",
    "MalformedPolicyError",
    "MockCredentials",
    "MockKmsServer",
    "MockPrincipal",
    "default_key_policy",
    "evaluate_policy",
    "load_or_create_credentials",
    "main",
    "policy_decision",
    "utc_now",
    "validate_policy",
    "verify_sigv4",
]


#: Where ``main`` listens unless told otherwise (loopback only, always).
DEFAULT_LISTEN = "127.0.0.1:4566"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


_PROG = "mock-kms"


def _parse_listen(text: str) -> tuple[str, int]:
    ep = Endpoint.parse(text)
    if ep.kind != "tcp" or ep.host is None:
        raise ConfigError(f"--listen: expected HOST:PORT, got {text!r}")
    return ep.host, ep.port


def _load_root(path: Path) -> TrustedRoot:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--root: cannot read {path}: {e}") from e
    try:
        root = TrustedRoot.unsafe_mock(data)
    except ConfigError as e:
        raise ConfigError(f"--root {path}: {e}") from e
    if hashlib.sha256(root.certificate_der).hexdigest() == AWS_NITRO_ROOT_SHA256:
        return TrustedRoot.aws_nitro(data)
    return root


def _build_parser() -> Parser:
    home = default_home()
    p = Parser(
        prog=_PROG,
        version=True,
        description="A local AWS KMS (JSON 1.1 protocol) for mock mode: loopback only, "
        "SigV4 checked against the principals' credentials in --state-dir, Recipient "
        "documents verified under --root.",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=home / MOCK_KMS_STATE,
        help=f"where keys are kept (default {home / MOCK_KMS_STATE})",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=home / MOCK_ROOT,
        help=f"root certificate (PEM or DER) Recipient documents must chain to "
        f"(default {home / MOCK_ROOT}, the mock enclave's published root)",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"loopback address to listen on (default {DEFAULT_LISTEN}; port 0 picks one)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="log requests to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock KMS until SIGTERM or SIGINT; 0 on a clean stop, 2 on a config error
    (the shared runner's error policy, :mod:`ephemeralml.runtime._runner`)."""
    return run_main(_PROG, _build_parser(), argv, _serve)


def _serve(args: argparse.Namespace) -> int:
    root = _load_root(args.root)
    server = MockKmsServer(args.state_dir, trusted_root=root, listen=_parse_listen(args.listen))
    server.start()
    if root.is_mock:
        print(
            f"{_PROG}: WARNING: Recipient documents are verified under a MOCK root "
            f"({root.fingerprint}); they prove nothing about hardware",
            file=sys.stderr,
        )
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"{_PROG}: listening on {server.url}", flush=True)
        print(ready_line(_PROG, url=server.url), file=sys.stderr, flush=True)
        print(
            f"{_PROG}: credentials of {', '.join(sorted(PRINCIPALS))} "
            f"(region {server.region}) in {args.state_dir / _CREDENTIALS_FILE}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.2):
            pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
