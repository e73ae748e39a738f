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

Authentication: SigV4, as AWS checks it (:func:`_Kms.authenticate`)
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
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import string
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ephemeralml.runtime._home import MOCK_ROOT, default_home, write_atomic
from ephemeralml.runtime._strict import loads_json

from ..common._attestation import (
    AWS_NITRO_ROOT_SHA256,
    AttestationPolicy,
    TrustedRoot,
    UnsafeAnyMeasurements,
    verify_attestation,
)
from ..common._errors import ConfigError, Error, KeyReleaseError, VerificationError
from ._cms_build import MAX_RSA_BITS, MIN_RSA_BITS, build_recipient_envelope

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

log = logging.getLogger("ephemeralml.host.mock_kms")

#: The mock's one account and region: key ARNs are
#: ``arn:aws:kms:us-east-1:111122223333:key/<id>`` (the AWS documentation's example account).
ACCOUNT_ID = "111122223333"
REGION = "us-east-1"
#: The service name SigV4 credential scopes must carry.
SERVICE = "kms"

#: How far a request's ``X-Amz-Date`` may be from the server's clock, in seconds: AWS's
#: SigV4 window (5 minutes; "Signature expired: ... (... - 5 min.)" beyond it).
MAX_CLOCK_SKEW_S = 300

#: Where ``main`` listens unless told otherwise (loopback only, always).
DEFAULT_LISTEN = "127.0.0.1:4566"

#: Largest request body, in bytes. The largest KMS field the mock takes is an
#: AttestationDocument (at most 262,144 bytes in the KMS API model, about 350 KiB in
#: base64); 1 MiB bounds what one request can make us buffer, with room to spare.
MAX_REQUEST_BYTES = 1024 * 1024

#: How long an idle or stalled connection is kept, in seconds: boto3 keeps
#: connections alive between calls, and a stalled peer must not pin a thread forever.
IDLE_TIMEOUT_S = 30.0

#: Oldest Recipient document accepted, in seconds: 10 years, i.e. no freshness check.
#: AWS KMS checks a Recipient document's signature and PCRs but not its age (FACTS.md,
#: "AWS KMS with a Recipient"); the mock must not be stricter than the real thing, or
#: tests would pass here that fail on AWS. Certificate validity at *now* is still
#: checked (A5), which bounds a replay to the leaf's lifetime (about 3 hours).
RECIPIENT_MAX_AGE_S = 10 * 365 * 24 * 3600.0

#: Largest key policy, in bytes: AWS KMS's key policy document size quota (32 KB).
MAX_KEY_POLICY_BYTES = 32 * 1024

#: The one ciphertext-blob format version this mock writes and reads.
BLOB_VERSION = 1

# KMS API model bounds (botocore kms 2014-11-01 service-2.json), in bytes or characters.
_MAX_CIPHERTEXT_BLOB = 6144
_MAX_PLAINTEXT = 4096
_MAX_ATTESTATION_DOCUMENT = 262144
_MAX_KEY_ID = 2048
_MAX_DESCRIPTION = 8192
_MAX_NUMBER_OF_BYTES = 1024

_BLOB_AAD_LABEL = b"ephemeralml-mock-kms-blob"
_NONCE_BYTES = 12
_KEY_ID_BYTES = 16
_TAG_BYTES = 16
_BLOB_HEADER_BYTES = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_KEY_MATERIAL_BYTES = 32

_KEY_FILE_FORMAT = "ephemeralml-mock-kms-key/1"
_KEYS_DIR = "keys"

_JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
_TARGET_PREFIX = "TrentService."

_KEY_SPECS = (
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
    "ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512",
    "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519", "ML_KEM_512",
    "ML_KEM_768", "ML_KEM_1024",
)  # fmt: skip
_KEY_USAGES = (
    "SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT",
    "ENCAPSULATE_DECAPSULATE",
)  # fmt: skip
_ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
_ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
_KEY_ENCRYPTION_ALGORITHMS = ("RSAES_OAEP_SHA_256",)

_CONDITION_IMAGE_SHA384 = "kms:RecipientAttestation:ImageSha384"
_CONDITION_PCR = "kms:RecipientAttestation:PCR{}"


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------
# Principals and their credentials
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MockPrincipal:
    """One IAM identity of the mock account: a role ARN and what its IAM policy allows.

    ``iam_actions`` stands in for the role's identity policy (action patterns with
    ``*``/``?``): it matters only where a key policy delegates to the account.
    """

    name: str
    arn: str
    iam_actions: tuple[str, ...]

    @property
    def session_arn(self) -> str:
        """The caller ARN AWS reports in errors: the assumed-role session."""
        if ":role/" not in self.arn:
            return self.arn
        return f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{self.arn.rsplit('/', 1)[1]}/mock"

    def iam_allows(self, action: str) -> bool:
        return any(_glob(a, ignore_case=True).match(action) for a in self.iam_actions)


MODEL_OWNER = "model-owner"
HOST = "host"
ENCLAVE = "enclave"
#: The account itself (its root user): what ``Principal: {"AWS": "<account>"}`` names.
#: No credentials are ever made for it; it is the default of :func:`policy_decision`.
ACCOUNT_ROOT = MockPrincipal("account", f"arn:aws:iam::{ACCOUNT_ID}:root", ("*",))
#: The mock's callers, by name. The enclave's role is, on AWS, the parent instance's
#: role: the host holds its credentials too (it hands them over, protocol.md §10.2).
PRINCIPALS: Mapping[str, MockPrincipal] = {
    MODEL_OWNER: MockPrincipal(
        MODEL_OWNER, f"arn:aws:iam::{ACCOUNT_ID}:role/ephemeralml-model-owner", ("kms:*",)
    ),
    HOST: MockPrincipal(HOST, f"arn:aws:iam::{ACCOUNT_ID}:role/ephemeralml-host", ()),
    ENCLAVE: MockPrincipal(
        ENCLAVE, f"arn:aws:iam::{ACCOUNT_ID}:role/ephemeralml-enclave", ("kms:Decrypt",)
    ),
}

_CREDENTIALS_FILE = "credentials.json"
_CREDENTIALS_FORMAT = "ephemeralml-mock-kms-credentials/1"
_ACCESS_KEY_ALPHABET = string.ascii_uppercase + "234567"


@dataclass(frozen=True)
class MockCredentials:
    """Temporary-style credentials of one principal (``ASIA…`` key, secret, session token)."""

    principal: MockPrincipal
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)

    def boto3_kwargs(self) -> dict[str, str]:
        """``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }


def _new_credentials(principal: MockPrincipal) -> MockCredentials:
    return MockCredentials(
        principal,
        "ASIA" + "".join(secrets.choice(_ACCESS_KEY_ALPHABET) for _ in range(16)),
        secrets.token_urlsafe(30),
        secrets.token_urlsafe(96),
    )


def load_or_create_credentials(state_dir: Path) -> dict[str, MockCredentials]:
    """Every principal's credentials from ``state_dir/credentials.json``, made if absent.

    The file is 0600 and written atomically; a corrupt one is a :class:`ConfigError`
    (delete it to get new credentials).
    """
    path = Path(state_dir) / _CREDENTIALS_FILE
    if not path.exists():
        creds = {name: _new_credentials(p) for name, p in PRINCIPALS.items()}
        data = {
            "format": _CREDENTIALS_FORMAT,
            "principals": {
                name: {
                    "Arn": c.principal.arn,
                    "AccessKeyId": c.access_key_id,
                    "SecretAccessKey": c.secret_access_key,
                    "SessionToken": c.session_token,
                }
                for name, c in creds.items()
            },
        }
        try:
            Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, json.dumps(data, indent=2).encode("utf-8"), mode=0o600)
        except OSError as e:
            raise ConfigError(f"mock KMS: cannot write {path}: {e}") from e
        return creds
    try:
        data = _load_json(path.read_bytes())
        if not isinstance(data, dict) or data.get("format") != _CREDENTIALS_FORMAT:
            raise ValueError(f"not a {_CREDENTIALS_FORMAT} file")
        entries = data["principals"]
        if not isinstance(entries, dict) or set(entries) != set(PRINCIPALS):
            raise ValueError(f"principals must be exactly {', '.join(sorted(PRINCIPALS))}")
        creds = {}
        for name, entry in entries.items():
            principal = PRINCIPALS[name]
            fields = [entry[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")]
            if entry.get("Arn") != principal.arn or not all(
                isinstance(f, str) and f for f in fields
            ):
                raise ValueError(f"the entry for {name} is malformed")
            creds[name] = MockCredentials(principal, *fields)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"mock KMS: credentials file {path} is unreadable or corrupt ({e})"
        ) from e
    if len({c.access_key_id for c in creds.values()}) != len(creds):
        raise ConfigError(f"mock KMS: credentials file {path} repeats an access key id")
    return creds


# ---------------------------------------------------------------------------
# Errors as KMS reports them
# ---------------------------------------------------------------------------


class _KmsError(Exception):
    """A KMS error response: ``code`` becomes ``__type``, ``message`` the message."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _validation(field: str, value: object, constraint: str) -> _KmsError:
    # The shape of AWS's own constraint messages.
    shown = "null" if value is None else f"'{value}'"
    # AWS names members in camelCase, nested ones dotted: 'recipient.keyEncryptionAlgorithm'.
    path = ".".join(part[:1].lower() + part[1:] for part in field.split("."))
    return _KmsError(
        "ValidationException",
        f"1 validation error detected: Value {shown} at '{path}' "
        f"failed to satisfy constraint: {constraint}",
    )


def _serialization(message: str) -> _KmsError:
    return _KmsError("SerializationException", message)


# ---------------------------------------------------------------------------
# SigV4: who is calling
# ---------------------------------------------------------------------------

_SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_SIGV4_TERMINATOR = "aws4_request"
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)
_BAD_TOKEN = "The security token included in the request is invalid."  # noqa: S105


def _incomplete(message: str) -> _KmsError:
    return _KmsError("IncompleteSignatureException", message)


def _invalid_signature(message: str = _BAD_SIGNATURE) -> _KmsError:
    return _KmsError("InvalidSignatureException", message)


def _authorization_fields(value: str) -> tuple[list[str], list[str], str]:
    """(credential scope parts, signed header names, signature) of a SigV4 header."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _SIGV4_ALGORITHM:
        raise _incomplete(f"Authorization header requires the '{_SIGV4_ALGORITHM}' algorithm.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, text = part.strip().partition("=")
        if sep:
            fields[name] = text
    missing = [n for n in ("Credential", "Signature", "SignedHeaders") if not fields.get(n)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{n}' parameter." for n in missing)
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5:
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{fields['Credential']}'"
        )
    signed = fields["SignedHeaders"].split(";")
    return scope, signed, fields["Signature"]


def verify_sigv4(
    method: str,
    path: str,
    headers: Any,
    body: bytes,
    *,
    credentials: Mapping[str, MockCredentials],
    region: str,
    now: datetime,
) -> MockPrincipal:
    """The principal whose credentials signed this request, or the :class:`_KmsError` AWS sends.

    ``headers`` is the received header block (``http.client.HTTPMessage``: several
    values per name kept). Checks, in order: an ``Authorization`` header (else
    ``MissingAuthenticationTokenException``); its SigV4 form, ``X-Amz-Date`` present
    and, with ``Host``, signed (``IncompleteSignatureException``); a known access key
    id and its exact session token (``UnrecognizedClientException``); the scope's
    service, region, terminator and date, the date within :data:`MAX_CLOCK_SKEW_S` of
    ``now``, and the signature itself (``InvalidSignatureException``). Not checked:
    that ``Host`` names this server (a forwarder in between changes it, and SigV4
    covers the value the client signed).
    """
    authorization = headers.get("Authorization")
    if not authorization:
        raise _KmsError("MissingAuthenticationTokenException", "Missing Authentication Token")
    (key_id, date, scope_region, service, terminator), signed_names, signature = (
        _authorization_fields(authorization)
    )
    signed_names = [n.lower() for n in signed_names]
    amz_date = headers.get("X-Amz-Date")
    if not amz_date:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        stamped = datetime.strptime(amz_date, _SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError as e:
        raise _incomplete(f"X-Amz-Date '{amz_date}' is not an ISO-8601 basic timestamp.") from e
    for required, shown in (("host", "'Host' or ':authority'"), ("x-amz-date", "'X-Amz-Date'")):
        if required not in signed_names:
            raise _incomplete(f"{shown} must be a 'SignedHeader' in the AWS Authorization.")
    caller = next((c for c in credentials.values() if c.access_key_id == key_id), None)
    token = headers.get("X-Amz-Security-Token") or ""
    if caller is None or not hmac.compare_digest(
        token.encode("utf-8"), caller.session_token.encode("utf-8")
    ):
        raise _KmsError("UnrecognizedClientException", _BAD_TOKEN)
    if service != SERVICE:
        raise _invalid_signature(f"Credential should be scoped to correct service: '{SERVICE}'. ")
    if scope_region != region:
        raise _invalid_signature(
            f"Credential should be scoped to a valid region, not '{scope_region}'. "
        )
    if terminator != _SIGV4_TERMINATOR:
        raise _invalid_signature(
            f"Credential should be scoped with a valid terminator: '{_SIGV4_TERMINATOR}', "
            f"not '{terminator}'. "
        )
    if date != amz_date[:8]:
        raise _invalid_signature(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from 'X-Amz-Date'."
        )
    skew = timedelta(seconds=MAX_CLOCK_SKEW_S)
    minutes = MAX_CLOCK_SKEW_S // 60
    now = now.astimezone(UTC)
    if stamped < now - skew:
        raise _invalid_signature(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - skew).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} - {minutes} min.)"
        )
    if stamped > now + skew:
        raise _invalid_signature(
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + skew).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} + {minutes} min.)"
        )
    signed = HTTPHeaders()
    for name in signed_names:
        values = headers.get_all(name)
        if not values:
            raise _invalid_signature()
        for value in values:
            signed[name] = value
    # The canonical request over the bytes received: method, path and query, the signed
    # headers, and the SHA-256 of the body as it arrived (never a client-declared hash).
    request = AWSRequest(method=method, url=f"http://signed.invalid{path}", data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(caller.access_key_id, caller.secret_access_key, caller.session_token),
        SERVICE,
        scope_region,
    )
    # botocore's SigV4, canonicalizing exactly the headers the client says it signed.
    signer.headers_to_sign = lambda _request: signed
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    expected = signer.signature(string_to_sign, request)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        raise _invalid_signature()
    return caller.principal


# ---------------------------------------------------------------------------
# Key policies
# ---------------------------------------------------------------------------


class MalformedPolicyError(ConfigError):
    """A key policy this evaluator does not accept (MalformedPolicyDocumentException)."""


class Decision(Enum):
    """The outcome of evaluating a key policy for one request."""

    ALLOW = "allow"
    EXPLICIT_DENY = "explicit_deny"
    IMPLICIT_DENY = "implicit_deny"


_POLICY_KEYS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Principal", "Action", "Resource", "Condition"})
_UNSUPPORTED_STATEMENT_KEYS = frozenset({"NotAction", "NotPrincipal", "NotResource"})
_PRINCIPAL_TYPES = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})
_POLICY_VERSIONS = frozenset({"2012-10-17", "2008-10-17"})
_ACTION_RE = re.compile(r"^(\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+)$")

# Condition operators (IAM JSON policy reference, "Condition operators"). Each maps to
# (negated, comparison); "...IfExists" forms are derived from these.
_STRING_OPERATORS: dict[str, tuple[bool, str]] = {
    "StringEquals": (False, "exact"),
    "StringNotEquals": (True, "exact"),
    "StringEqualsIgnoreCase": (False, "ignore_case"),
    "StringNotEqualsIgnoreCase": (True, "ignore_case"),
    "StringLike": (False, "like"),
    "StringNotLike": (True, "like"),
}
_IF_EXISTS = "IfExists"


def _glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    # IAM wildcards: '*' any run of characters, '?' any one character; nothing else.
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _string_list(value: object, *, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise MalformedPolicyError(f"{what} must be a string or a non-empty list of strings")


def _split_operator(op: object) -> tuple[bool, str, bool]:
    if not isinstance(op, str):
        raise MalformedPolicyError("condition operator must be a string")
    base, if_exists = (op[: -len(_IF_EXISTS)], True) if op.endswith(_IF_EXISTS) else (op, False)
    if base not in _STRING_OPERATORS:
        raise MalformedPolicyError(
            f"condition operator {op!r} is not supported (the mock knows "
            f"{', '.join(sorted(_STRING_OPERATORS))} and their IfExists forms)"
        )
    negated, comparison = _STRING_OPERATORS[base]
    return negated, comparison, if_exists


@dataclass(frozen=True)
class _Statement:
    allow: bool
    # None: "Principal": "*". Otherwise the AWS principals named (other principal
    # types name no caller of the mock, so they are kept out and never match).
    principals: tuple[str, ...] | None
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    # (negated, comparison, if_exists, lowercase key, values)
    conditions: tuple[tuple[bool, str, bool, str, tuple[str, ...]], ...]


def _parse_statement(n: int, raw: object) -> _Statement:
    where = f"Statement[{n}]"
    if not isinstance(raw, Mapping):
        raise MalformedPolicyError(f"{where} must be an object")
    unsupported = _UNSUPPORTED_STATEMENT_KEYS & set(raw)
    if unsupported:
        raise MalformedPolicyError(
            f"{where}: {', '.join(sorted(unsupported))} is not supported by the mock KMS"
        )
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise MalformedPolicyError(
            f"{where}: unknown element(s) {', '.join(sorted(map(str, unknown)))}"
        )
    # AWS key policies require Effect, Principal, Action and Resource in every statement.
    for required in ("Effect", "Principal", "Action", "Resource"):
        if required not in raw:
            raise MalformedPolicyError(f"{where}: {required} is required in a key policy")
    effect = raw["Effect"]
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicyError(f"{where}: Effect must be 'Allow' or 'Deny'")
    principal = raw["Principal"]
    principals: tuple[str, ...] | None = None
    if principal != "*":
        if not isinstance(principal, Mapping) or not principal:
            raise MalformedPolicyError(f"{where}: Principal must be '*' or an object")
        named: list[str] = []
        for kind, value in principal.items():
            if kind not in _PRINCIPAL_TYPES:
                raise MalformedPolicyError(f"{where}: unknown principal type {kind!r}")
            values = _string_list(value, what=f"{where}: Principal.{kind}")
            if kind == "AWS":
                named.extend(values)
        principals = tuple(named)
    actions = _string_list(raw["Action"], what=f"{where}: Action")
    for action in actions:
        if not _ACTION_RE.match(action):
            raise MalformedPolicyError(f"{where}: Action {action!r} is not 'service:Name'")
    resources = _string_list(raw["Resource"], what=f"{where}: Resource")
    conditions: list[tuple[bool, str, bool, str, tuple[str, ...]]] = []
    block = raw.get("Condition", {})
    if not isinstance(block, Mapping):
        raise MalformedPolicyError(f"{where}: Condition must be an object")
    for op, keys in block.items():
        negated, comparison, if_exists = _split_operator(op)
        if not isinstance(keys, Mapping) or not keys:
            raise MalformedPolicyError(f"{where}: Condition.{op} must be a non-empty object")
        for key, values in keys.items():
            if not isinstance(key, str) or not key:
                raise MalformedPolicyError(f"{where}: condition key must be a non-empty string")
            conditions.append(
                (
                    negated,
                    comparison,
                    if_exists,
                    key.lower(),  # condition key names are case-insensitive in IAM
                    _string_list(values, what=f"{where}: Condition.{op}.{key}"),
                )
            )
    return _Statement(
        allow=effect == "Allow",
        principals=principals,
        actions=actions,
        resources=resources,
        conditions=tuple(conditions),
    )


def _parse_policy(policy: object) -> tuple[_Statement, ...]:
    if not isinstance(policy, Mapping):
        raise MalformedPolicyError("a policy must be a JSON object")
    unknown = set(policy) - _POLICY_KEYS
    if unknown:
        raise MalformedPolicyError(
            f"unknown policy element(s) {', '.join(sorted(map(str, unknown)))}"
        )
    if "Version" in policy and policy["Version"] not in _POLICY_VERSIONS:
        raise MalformedPolicyError(f"unsupported policy Version {policy['Version']!r}")
    raw = policy.get("Statement")
    statements = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(statements, list) or not statements:
        raise MalformedPolicyError("Statement must be an object or a non-empty list of objects")
    return tuple(_parse_statement(n, s) for n, s in enumerate(statements))


def validate_policy(policy: object) -> None:
    """Raise :class:`MalformedPolicyError` unless ``policy`` is a policy this evaluator takes."""
    _parse_policy(policy)


def _condition_holds(
    negated: bool,
    comparison: str,
    if_exists: bool,
    key: str,
    values: tuple[str, ...],
    context: Mapping[str, str],
) -> bool:
    # IAM JSON policy reference, "Condition operators": "If the key that you specify
    # in a policy condition is not present in the request context, the values do not
    # match and the condition is false. If the policy condition requires that the key
    # is not matched, such as StringNotLike or ArnNotLike, and the right key is not
    # present, the condition is true." ...IfExists: an absent key makes it true.
    if key not in context:
        return if_exists or negated
    actual = context[key]
    if comparison == "exact":
        matched = any(actual == v for v in values)
    elif comparison == "ignore_case":
        matched = any(actual.lower() == v.lower() for v in values)
    else:
        matched = any(_glob(v, ignore_case=False).match(actual) for v in values)
    # Several values are any-of; a negated operator holds when none matches.
    return not matched if negated else matched


_ACCOUNT_FORMS = frozenset({ACCOUNT_ID, ACCOUNT_ROOT.arn})


def _principal_match(st: _Statement, caller: MockPrincipal) -> str | None:
    """``"direct"`` when the statement names the caller (or ``*``), ``"account"`` when
    it names the caller's account (delegating to IAM), else None."""
    if st.principals is None or "*" in st.principals or caller.arn in st.principals:
        return "direct"
    if _ACCOUNT_FORMS.intersection(st.principals):
        return "direct" if caller.arn == ACCOUNT_ROOT.arn else "account"
    return None


def _statement_applies(
    st: _Statement, action: str, resource: str | None, context: Mapping[str, str]
) -> bool:
    # Action names are case-insensitive.
    if not any(_glob(a, ignore_case=True).match(action) for a in st.actions):
        return False
    if resource is not None and not any(
        _glob(r, ignore_case=False).match(resource) for r in st.resources
    ):
        return False
    # Conditions: operators AND keys AND (values any-of, inside _condition_holds).
    return all(_condition_holds(*c, context) for c in st.conditions)


def policy_decision(
    policy: Mapping[str, Any],
    action: str,
    context: Mapping[str, str],
    *,
    resource: str | None = None,
    principal: MockPrincipal = ACCOUNT_ROOT,
) -> Decision:
    """Evaluate a key policy for ``action`` (``"kms:Decrypt"``) by ``principal`` in a ``context``.

    ``context`` maps condition keys (case-insensitive) to the request's values; a
    key absent from it is absent from the request, which the String operators treat
    as AWS does (see :func:`_condition_holds`). ``resource`` is the key's ARN
    (``None``: every ``Resource`` matches). A statement applies to ``principal`` when
    it names ``*`` or the principal's ARN; one naming the account applies to the
    account itself, and to one of its roles only for an Allow the role's IAM policy
    also grants (AWS: the key policy delegates to IAM), while its Deny binds every
    role. An applicable ``Deny`` wins over any ``Allow``; with no applicable
    ``Allow`` the answer is an implicit deny. Raises :class:`MalformedPolicyError`
    for a policy it does not understand.
    """
    statements = _parse_policy(policy)
    ctx = {str(k).lower(): v for k, v in context.items()}
    allowed = False
    for st in statements:
        match = _principal_match(st, principal)
        if match is None or not _statement_applies(st, action, resource, ctx):
            continue
        if not st.allow:
            return Decision.EXPLICIT_DENY
        if match == "direct" or principal.iam_allows(action):
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def evaluate_policy(
    policy: Mapping[str, Any],
    action: str,
    context: Mapping[str, str],
    *,
    resource: str | None = None,
    principal: MockPrincipal = ACCOUNT_ROOT,
) -> bool:
    """True when ``policy`` allows ``action`` in ``context`` (:func:`policy_decision`)."""
    decision = policy_decision(policy, action, context, resource=resource, principal=principal)
    return decision is Decision.ALLOW


def default_key_policy() -> str:
    """AWS's default key policy: ``kms:*`` for the account (each role as far as its IAM allows)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


def _load_json(text: str | bytes) -> Any:
    return loads_json(text)


def _policy_from_text(text: str) -> dict[str, Any]:
    if len(text.encode("utf-8")) > MAX_KEY_POLICY_BYTES:
        raise _KmsError(
            "LimitExceededException",
            f"The key policy exceeds the {MAX_KEY_POLICY_BYTES}-byte size limit",
        )
    try:
        policy = _load_json(text)
        validate_policy(policy)
    except (ValueError, MalformedPolicyError) as e:
        raise _KmsError("MalformedPolicyDocumentException", f"The policy is malformed: {e}") from e
    assert isinstance(policy, dict)
    return policy


# ---------------------------------------------------------------------------
# Keys and their files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key_id: str
    material: bytes = dataclasses.field(repr=False)
    created: float
    description: str
    policy: str
    region: str = REGION  # not stored: the server's region names the key

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:key/{self.key_id}"

    @property
    def id_bytes(self) -> bytes:
        return uuid.UUID(self.key_id).bytes

    def metadata(self) -> dict[str, Any]:
        return {
            "AWSAccountId": ACCOUNT_ID,
            "KeyId": self.key_id,
            "Arn": self.arn,
            "CreationDate": self.created,
            "Enabled": True,
            "Description": self.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "Enabled",
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
        }

    def to_file(self) -> bytes:
        return json.dumps(
            {
                "format": _KEY_FILE_FORMAT,
                "KeyId": self.key_id,
                "CreationDate": self.created,
                "Description": self.description,
                "KeySpec": "SYMMETRIC_DEFAULT",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeyMaterial": base64.b64encode(self.material).decode("ascii"),
                "Policy": self.policy,
            },
            indent=2,
        ).encode("utf-8")

    @classmethod
    def from_file(cls, path: Path) -> _Key:
        try:
            data = _load_json(path.read_bytes())
            if not isinstance(data, dict) or data.get("format") != _KEY_FILE_FORMAT:
                raise ValueError(f"not a {_KEY_FILE_FORMAT} file")
            key_id = data["KeyId"]
            if not isinstance(key_id, str) or str(uuid.UUID(key_id)) != key_id:
                raise ValueError("KeyId is not a lowercase UUID")
            if path.name != f"{key_id}.json":
                raise ValueError(f"file name does not match KeyId {key_id}")
            material = base64.b64decode(data["KeyMaterial"], validate=True)
            if len(material) != _KEY_MATERIAL_BYTES:
                raise ValueError("KeyMaterial is not 32 bytes")
            created = data["CreationDate"]
            description = data["Description"]
            policy = data["Policy"]
            if isinstance(created, bool) or not isinstance(created, int | float):
                raise ValueError("CreationDate is not a number")
            if not isinstance(description, str) or not isinstance(policy, str):
                raise ValueError("Description and Policy must be strings")
            validate_policy(_load_json(policy))
        except (
            OSError,
            KeyError,
            ValueError,
            TypeError,
            binascii.Error,
            MalformedPolicyError,
        ) as e:
            raise ConfigError(f"mock KMS: key file {path} is unreadable or corrupt ({e})") from e
        return cls(
            key_id=key_id,
            material=material,
            created=float(created),
            description=description,
            policy=policy,
        )


class _KeyStore:
    """Keys in memory, each also in ``<state_dir>/keys/<id>.json`` (0600, atomic)."""

    def __init__(self, state_dir: Path, region: str = REGION) -> None:
        self._dir = Path(state_dir) / _KEYS_DIR
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        try:
            Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self._dir, 0o700)
            paths = sorted(p for p in self._dir.glob("*.json") if not p.name.startswith("."))
        except OSError as e:
            raise ConfigError(f"mock KMS: cannot use state folder {state_dir}: {e}") from e
        for path in paths:
            key = dataclasses.replace(_Key.from_file(path), region=region)
            self._keys[key.key_id] = key
        self.region = region

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def get(self, key_id: str) -> _Key | None:
        with self._lock:
            return self._keys.get(key_id)

    def save(self, key: _Key) -> None:
        with self._lock:
            try:
                write_atomic(self._dir / f"{key.key_id}.json", key.to_file(), mode=0o600)
            except OSError as e:
                raise _KmsError(
                    "KMSInternalException", "The key could not be stored", status=500
                ) from e
            self._keys[key.key_id] = key


# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------


class _Body:
    """Typed access to one JSON object of a request (botocore's shapes, checked)."""

    def __init__(self, data: Mapping[str, Any], *, prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix

    def _name(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _get(self, name: str, required: bool) -> Any:
        value = self._data.get(name)
        if value is None and required:
            raise _validation(self._name(name), None, "Member must not be null")
        return value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        min_len: int = 0,
        max_len: int | None = None,
        enum: Sequence[str] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _serialization(f"{self._name(name)}: expected a string")
        if len(value) < min_len:
            raise _validation(
                self._name(name),
                value,
                f"Member must have length greater than or equal to {min_len}",
            )
        if max_len is not None and len(value) > max_len:
            raise _validation(
                self._name(name),
                value[:64],
                f"Member must have length less than or equal to {max_len}",
            )
        if enum is not None and value not in enum:
            raise _validation(
                self._name(name), value, f"Member must satisfy enum value set: [{', '.join(enum)}]"
            )
        return value

    def blob(self, name: str, *, required: bool = False, max_len: int) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _serialization(f"{self._name(name)}: expected a base64 string")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _serialization(f"{self._name(name)}: not valid base64") from e
        if not 1 <= len(data) <= max_len:
            raise _validation(
                self._name(name),
                "<binary>",
                f"Member must have length between 1 and {max_len}",
            )
        return data

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _serialization(f"{self._name(name)}: expected an integer")
        if not minimum <= value <= maximum:
            raise _validation(
                self._name(name), value, f"Member must have value between {minimum} and {maximum}"
            )
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _serialization(f"{self._name(name)}: expected a boolean")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _serialization(f"{self._name(name)}: expected a map of strings to strings")
        return dict(value)

    def string_list(self, name: str, *, max_items: int) -> list[str]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _serialization(f"{self._name(name)}: expected a list of strings")
        if len(value) > max_items:
            raise _validation(
                self._name(name),
                "<list>",
                f"Member must have length less than or equal to {max_items}",
            )
        return list(value)

    def any_list(self, name: str) -> list[Any]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _serialization(f"{self._name(name)}: expected a list")
        return value

    def struct(self, name: str) -> _Body | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _serialization(f"{self._name(name)}: expected an object")
        return _Body(value, prefix=f"{self._name(name)}.")


# ---------------------------------------------------------------------------
# Ciphertext blobs
# ---------------------------------------------------------------------------


def _blob_aad(id_bytes: bytes, encryption_context: Mapping[str, str]) -> bytes:
    # The encryption context is bound exactly (AWS: "an exact case-sensitive match").
    canonical = json.dumps(encryption_context, sort_keys=True, separators=(",", ":"))
    return _BLOB_AAD_LABEL + bytes([BLOB_VERSION]) + id_bytes + canonical.encode("utf-8")


def _seal(key: _Key, plaintext: bytes, encryption_context: Mapping[str, str]) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.material).encrypt(
        nonce, plaintext, _blob_aad(key.id_bytes, encryption_context)
    )
    return bytes([BLOB_VERSION]) + key.id_bytes + nonce + sealed


def _invalid_ciphertext() -> _KmsError:
    return _KmsError("InvalidCiphertextException", "The ciphertext is invalid or corrupted")


def _blob_key_id(blob: bytes) -> str:
    if len(blob) < _BLOB_HEADER_BYTES + _TAG_BYTES or blob[0] != BLOB_VERSION:
        raise _invalid_ciphertext()
    return str(uuid.UUID(bytes=blob[1 : 1 + _KEY_ID_BYTES]))


def _open(key: _Key, blob: bytes, encryption_context: Mapping[str, str]) -> bytes:
    nonce = blob[1 + _KEY_ID_BYTES : _BLOB_HEADER_BYTES]
    try:
        return AESGCM(key.material).decrypt(
            nonce, blob[_BLOB_HEADER_BYTES:], _blob_aad(key.id_bytes, encryption_context)
        )
    except InvalidTag as e:
        raise _invalid_ciphertext() from e


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipient:
    context: Mapping[str, str]
    public_key_der: bytes


class _Kms:
    """The operations, without HTTP: JSON object in, JSON object out, or :class:`_KmsError`."""

    def __init__(
        self,
        store: _KeyStore,
        trusted_root: TrustedRoot,
        clock: Callable[[], datetime],
        *,
        credentials: Mapping[str, MockCredentials],
        signing_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._root = trusted_root
        self._clock = clock
        self._credentials = dict(credentials)
        self._signing_clock = signing_clock
        self.region = store.region
        self.operations: dict[str, Callable[[_Body, MockPrincipal], dict[str, Any]]] = {
            "CreateKey": self.create_key,
            "DescribeKey": self.describe_key,
            "GetKeyPolicy": self.get_key_policy,
            "PutKeyPolicy": self.put_key_policy,
            "Encrypt": self.encrypt,
            "Decrypt": self.decrypt,
            "GenerateDataKey": self.generate_data_key,
        }

    # -- helpers ---------------------------------------------------------------

    def authenticate(self, method: str, path: str, headers: Any, body: bytes) -> MockPrincipal:
        """The caller, by its SigV4 signature (:func:`verify_sigv4`), or a :class:`_KmsError`."""
        return verify_sigv4(
            method,
            path,
            headers,
            body,
            credentials=self._credentials,
            region=self.region,
            now=self._signing_clock(),
        )

    def _resolve(self, key_id: str) -> _Key:
        prefix = f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:key/"
        bare = key_id[len(prefix) :] if key_id.startswith(prefix) else key_id
        if bare.startswith("alias/") or (key_id.startswith("arn:aws:kms:") and ":alias/" in key_id):
            raise _KmsError(
                "NotFoundException", f"Alias {key_id} is not found (the mock has no aliases)"
            )
        try:
            canonical = str(uuid.UUID(bare))
        except ValueError:
            raise _KmsError("NotFoundException", f"Invalid keyId {key_id}") from None
        if canonical != bare.lower():
            raise _KmsError("NotFoundException", f"Invalid keyId {key_id}")
        key = self._store.get(canonical)
        if key is None:
            raise _KmsError("NotFoundException", f"Key '{prefix}{canonical}' does not exist")
        return key

    def _authorize(
        self, key: _Key, action: str, context: Mapping[str, str], caller: MockPrincipal
    ) -> None:
        decision = policy_decision(
            _load_json(key.policy),
            action,
            {"kms:CallerAccount": ACCOUNT_ID, **context},
            resource=key.arn,
            principal=caller,
        )
        if decision is Decision.ALLOW:
            return
        why = (
            "with an explicit deny in a resource-based policy"
            if decision is Decision.EXPLICIT_DENY
            else f"because no resource-based policy allows the {action} action"
        )
        raise _KmsError(
            "AccessDeniedException",
            f"User: {caller.session_arn} is not authorized to perform: {action} on resource: "
            f"{key.arn} {why}",
        )

    def _recipient(self, body: _Body | None) -> _Recipient | None:
        """Check a Recipient and verify its document (not its age; module docstring)."""
        if body is None:
            return None
        body.string("KeyEncryptionAlgorithm", required=True, enum=_KEY_ENCRYPTION_ALGORITHMS)
        document = body.blob(
            "AttestationDocument", required=True, max_len=_MAX_ATTESTATION_DOCUMENT
        )
        assert document is not None
        policy = AttestationPolicy(
            root=self._root, measurements=UnsafeAnyMeasurements(), max_age_s=RECIPIENT_MAX_AGE_S
        )
        try:
            verified = verify_attestation(document, policy, now=self._clock())
        except VerificationError as e:
            raise _KmsError(
                "ValidationException", f"The attestation document is not valid: {e}"
            ) from e
        doc = verified.document
        spki = doc.public_key
        if spki is None:
            raise _KmsError("ValidationException", "The attestation document has no public key")
        try:
            public_key = serialization.load_der_public_key(spki)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise _KmsError(
                "ValidationException",
                "The public key in the attestation document is not a SubjectPublicKeyInfo",
            ) from e
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise _KmsError(
                "ValidationException",
                "The public key in the attestation document is not an RSA key "
                "(RSAES_OAEP_SHA_256 needs one)",
            )
        if not MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
            raise _KmsError(
                "ValidationException",
                f"The RSA key in the attestation document is {public_key.key_size} bits; "
                f"{MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted",
            )
        canonical = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if canonical != spki:
            raise _KmsError(
                "ValidationException",
                "The public key in the attestation document is not DER-encoded",
            )
        # The condition keys AWS KMS derives from the document (conditions-nitro-enclave).
        context = {_CONDITION_IMAGE_SHA384: doc.pcrs[0].hex()}
        for index, value in doc.pcrs.items():
            context[_CONDITION_PCR.format(index)] = value.hex()
        return _Recipient(context=context, public_key_der=spki)

    def _symmetric_only(self, algorithm: str | None) -> None:
        if algorithm not in (None, "SYMMETRIC_DEFAULT"):
            raise _KmsError(
                "InvalidKeyUsageException",
                f"The encryption algorithm {algorithm} is not compatible with a "
                "SYMMETRIC_DEFAULT key",
            )

    def _dry_run(self, dry_run: bool) -> None:
        if dry_run:
            raise _KmsError(
                "DryRunOperationException",
                "The request would have succeeded, but the DryRun option is set.",
                status=412,
            )

    def _release(
        self, response: dict[str, Any], plaintext: bytearray, recipient: _Recipient | None
    ) -> dict[str, Any]:
        """Put ``plaintext`` in the response: as CiphertextForRecipient, or as Plaintext."""
        try:
            if recipient is None:
                response["Plaintext"] = _b64(plaintext)
            else:
                # AWS: "The Plaintext field in the response is null or empty": omitted here.
                try:
                    envelope = build_recipient_envelope(bytes(plaintext), recipient.public_key_der)
                except KeyReleaseError as e:
                    raise _KmsError("ValidationException", str(e)) from e
                response["CiphertextForRecipient"] = _b64(envelope)
        finally:
            _wipe(plaintext)
        return response

    # -- operations ------------------------------------------------------------

    def create_key(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        policy_text = body.string("Policy", min_len=1, max_len=131072)
        description = body.string("Description", max_len=_MAX_DESCRIPTION) or ""
        usage = body.string("KeyUsage", enum=_KEY_USAGES) or "ENCRYPT_DECRYPT"
        spec = body.string("KeySpec", enum=_KEY_SPECS)
        legacy_spec = body.string("CustomerMasterKeySpec", enum=_KEY_SPECS)
        origin = body.string("Origin", enum=_ORIGINS) or "AWS_KMS"
        bypass = body.boolean("BypassPolicyLockoutSafetyCheck")
        body.any_list("Tags")  # accepted and ignored
        if spec is not None and legacy_spec is not None:
            raise _KmsError(
                "ValidationException", "KeySpec and CustomerMasterKeySpec cannot both be given"
            )
        spec = spec or legacy_spec or "SYMMETRIC_DEFAULT"
        if spec != "SYMMETRIC_DEFAULT" or usage != "ENCRYPT_DECRYPT" or origin != "AWS_KMS":
            raise _KmsError(
                "UnsupportedOperationException",
                "The mock KMS makes only SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys of origin AWS_KMS",
            )
        if (
            body.boolean("MultiRegion")
            or body.string("CustomKeyStoreId")
            or body.string("XksKeyId")
        ):
            raise _KmsError(
                "UnsupportedOperationException",
                "The mock KMS has no multi-Region keys and no custom key stores",
            )
        if policy_text is None:
            policy_text = default_key_policy()
        else:
            self._lockout_check(_policy_from_text(policy_text), bypass, caller)
        key = _Key(
            key_id=str(uuid.uuid4()),
            material=os.urandom(_KEY_MATERIAL_BYTES),
            created=round(self._clock().timestamp(), 3),
            description=description,
            policy=policy_text,
            region=self.region,
        )
        self._store.save(key)
        return {"KeyMetadata": key.metadata()}

    def _lockout_check(
        self, policy: Mapping[str, Any], bypass: bool, caller: MockPrincipal
    ) -> None:
        # AWS's policy lockout safety check: refuse a policy under which the caller
        # could never change the policy again, unless explicitly bypassed.
        if not bypass and not evaluate_policy(
            policy, "kms:PutKeyPolicy", {"kms:CallerAccount": ACCOUNT_ID}, principal=caller
        ):
            raise _KmsError(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )

    def describe_key(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        key_id = body.string("KeyId", required=True, min_len=1, max_len=_MAX_KEY_ID)
        body.string_list("GrantTokens", max_items=10)
        assert key_id is not None
        key = self._resolve(key_id)
        self._authorize(key, "kms:DescribeKey", {}, caller)
        return {"KeyMetadata": key.metadata()}

    def _policy_name(self, body: _Body, *, for_put: bool) -> None:
        name = body.string("PolicyName", min_len=1, max_len=128)
        if name in (None, "default"):
            return
        if name == "AWS_RAM" and not for_put:
            raise _KmsError("NotFoundException", "The key has no AWS_RAM key policy")
        raise _KmsError(
            "ValidationException",
            f"PolicyName {name!r} is not valid"
            + ("; only the 'default' key policy can be set" if for_put else ""),
        )

    def get_key_policy(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        key_id = body.string("KeyId", required=True, min_len=1, max_len=_MAX_KEY_ID)
        assert key_id is not None
        self._policy_name(body, for_put=False)
        key = self._resolve(key_id)
        self._authorize(key, "kms:GetKeyPolicy", {}, caller)
        return {"Policy": key.policy, "PolicyName": "default"}

    def put_key_policy(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        key_id = body.string("KeyId", required=True, min_len=1, max_len=_MAX_KEY_ID)
        policy_text = body.string("Policy", required=True, min_len=1, max_len=131072)
        bypass = body.boolean("BypassPolicyLockoutSafetyCheck")
        assert key_id is not None and policy_text is not None
        self._policy_name(body, for_put=True)
        key = self._resolve(key_id)
        self._authorize(key, "kms:PutKeyPolicy", {}, caller)
        self._lockout_check(_policy_from_text(policy_text), bypass, caller)
        self._store.save(dataclasses.replace(key, policy=policy_text))
        return {}

    def encrypt(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        key_id = body.string("KeyId", required=True, min_len=1, max_len=_MAX_KEY_ID)
        plaintext = body.blob("Plaintext", required=True, max_len=_MAX_PLAINTEXT)
        context = body.string_map("EncryptionContext")
        algorithm = body.string("EncryptionAlgorithm", enum=_ENCRYPTION_ALGORITHMS)
        body.string_list("GrantTokens", max_items=10)
        dry_run = body.boolean("DryRun")
        assert key_id is not None and plaintext is not None
        key = self._resolve(key_id)
        self._symmetric_only(algorithm)
        self._authorize(key, "kms:Encrypt", {}, caller)
        self._dry_run(dry_run)
        return {
            "CiphertextBlob": _b64(_seal(key, plaintext, context)),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    def decrypt(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        blob = body.blob("CiphertextBlob", required=True, max_len=_MAX_CIPHERTEXT_BLOB)
        key_id = body.string("KeyId", min_len=1, max_len=_MAX_KEY_ID)
        context = body.string_map("EncryptionContext")
        algorithm = body.string("EncryptionAlgorithm", enum=_ENCRYPTION_ALGORITHMS)
        recipient_body = body.struct("Recipient")
        body.string_list("GrantTokens", max_items=10)
        dry_run = body.boolean("DryRun")
        assert blob is not None
        named = self._resolve(key_id) if key_id is not None else None
        blob_key_id = _blob_key_id(blob)
        if named is not None and named.key_id != blob_key_id:
            raise _KmsError(
                "IncorrectKeyException",
                "The key ID in the request does not identify a KMS key that can perform "
                "this operation.",
            )
        # A blob naming a key this store does not hold is someone else's ciphertext
        # (or a tampered key id): indistinguishable, and both are invalid ciphertext.
        key = named or self._store.get(blob_key_id)
        if key is None:
            raise _invalid_ciphertext()
        self._symmetric_only(algorithm)
        recipient = self._recipient(recipient_body)
        self._authorize(key, "kms:Decrypt", recipient.context if recipient else {}, caller)
        self._dry_run(dry_run)
        plaintext = bytearray(_open(key, blob, context))
        response = {"KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
        return self._release(response, plaintext, recipient)

    def generate_data_key(self, body: _Body, caller: MockPrincipal) -> dict[str, Any]:
        key_id = body.string("KeyId", required=True, min_len=1, max_len=_MAX_KEY_ID)
        spec = body.string("KeySpec", enum=tuple(_DATA_KEY_SPECS))
        number = body.integer("NumberOfBytes", minimum=1, maximum=_MAX_NUMBER_OF_BYTES)
        context = body.string_map("EncryptionContext")
        recipient_body = body.struct("Recipient")
        body.string_list("GrantTokens", max_items=10)
        dry_run = body.boolean("DryRun")
        assert key_id is not None
        if (spec is None) == (number is None):
            raise _KmsError(
                "ValidationException",
                "Please specify either number of bytes or key spec, but not both.",
            )
        length = _DATA_KEY_SPECS[spec] if spec is not None else number
        assert length is not None
        key = self._resolve(key_id)
        recipient = self._recipient(recipient_body)
        self._authorize(key, "kms:GenerateDataKey", recipient.context if recipient else {}, caller)
        self._dry_run(dry_run)
        data_key = bytearray(os.urandom(length))
        try:
            blob = _seal(key, bytes(data_key), context)
        except BaseException:
            _wipe(data_key)
            raise
        response = {"CiphertextBlob": _b64(blob), "KeyId": key.arn}
        return self._release(response, data_key, recipient)


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects
    server_version = "ephemeralml-mock-kms"
    timeout = IDLE_TIMEOUT_S

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's access log goes to debug; the request log is in do_POST.
        log.debug("http: " + format, *args)

    def _send(self, status: int, payload: Mapping[str, Any] | None, request_id: str) -> None:
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", _JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", request_id)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _KmsError("ValidationException", "Chunked request bodies are not supported")
        raw_length = self.headers.get("Content-Length")
        try:
            length = int(raw_length) if raw_length is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _KmsError("ValidationException", "Content-Length is required")
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True  # the body is left unread
            raise _KmsError(
                "ValidationException",
                f"The request body is {length} bytes; the limit is {MAX_REQUEST_BYTES}",
            )
        try:
            data = self.rfile.read(length)
        except OSError as e:  # a stalled peer: the socket timed out (IDLE_TIMEOUT_S)
            self.close_connection = True
            raise _serialization("The request body could not be read") from e
        if len(data) != length:
            self.close_connection = True
            raise _serialization("The request body is shorter than its Content-Length")
        return data

    def do_POST(self) -> None:
        request_id = str(uuid.uuid4())
        target = self.headers.get("X-Amz-Target", "")
        op = target[len(_TARGET_PREFIX) :] if target.startswith(_TARGET_PREFIX) else ""
        try:
            raw = self._read_body()
            # Who is calling, before anything else is looked at (the body is read first,
            # bounded, because the signature covers its hash).
            caller = self.server.service.authenticate(self.command, self.path, self.headers, raw)
            handler = self.server.service.operations.get(op)
            if handler is None:
                raise _KmsError(
                    "UnknownOperationException",
                    f"The mock KMS does not implement {target or 'this request (no X-Amz-Target)'}",
                )
            try:
                data = _load_json(raw) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError) as e:
                raise _serialization(f"The request body is not valid JSON: {e}") from e
            if not isinstance(data, dict):
                raise _serialization("The request body must be a JSON object")
            result = handler(_Body(data), caller)
        except _KmsError as e:
            log.info("request %s %s failed: %s", request_id, op or target or "-", e.code)
            self._send(e.status, {"__type": e.code, "message": e.message}, request_id)
            return
        except Exception:
            # Never echo an exception: it might hold request data. The traceback is for
            # the operator, and names no key material (nothing here formats secrets).
            log.exception("request %s %s: internal error", request_id, op)
            self._send(
                500,
                {"__type": "KMSInternalException", "message": "An internal error occurred"},
                request_id,
            )
            return
        key = result.get("KeyId") or result.get("KeyMetadata", {}).get("KeyId") or "-"
        log.info("request %s %s ok key=%s caller=%s", request_id, op, key, caller.name)
        self._send(200, result or None, request_id)

    def _not_post(self) -> None:
        request_id = str(uuid.uuid4())
        self.close_connection = True
        self._send(
            400,
            {"__type": "UnknownOperationException", "message": "KMS takes POST / only"},
            request_id,
        )

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_post


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: _Kms) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.service = service
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that resets or times out is routine; no traceback on stderr.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _check_loopback(host: str) -> None:
    # Its credentials are files on this machine and its documents are signed by a
    # mock CA whose key is on this machine too: it is a development server.
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"mock KMS: refusing to listen on {host!r}: its credentials and its mock "
            "root's key are on this machine, so it listens on loopback only"
        )


class MockKmsServer:
    """The mock KMS on a loopback HTTP port, served from a background thread.

    ``state_dir`` holds the keys and the principals' credentials (loaded or made now,
    at construction; a corrupt file is a :class:`ConfigError`). ``trusted_root`` is
    the root Recipient documents must chain to; ``clock`` gives *now* for their
    certificate validity; ``signing_clock`` the *now* SigV4 dates are held to
    (:data:`MAX_CLOCK_SKEW_S`). ``region`` is the region credential scopes must name
    and key ARNs carry. Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        trusted_root: TrustedRoot,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        clock: Callable[[], datetime] = utc_now,
        signing_clock: Callable[[], datetime] = utc_now,
        region: str = REGION,
    ) -> None:
        if not isinstance(trusted_root, TrustedRoot):
            raise ConfigError("mock KMS: trusted_root must be a TrustedRoot")
        host, port = listen
        _check_loopback(host)
        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"mock KMS: port {port!r} is not in 0..65535")
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            raise ConfigError(f"mock KMS: {region!r} is not an AWS region name")
        self._listen = (host, port)
        store = _KeyStore(Path(state_dir), region)
        self._credentials = load_or_create_credentials(Path(state_dir))
        self._service = _Kms(
            store,
            trusted_root,
            clock,
            credentials=self._credentials,
            signing_clock=signing_clock,
        )
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def region(self) -> str:
        return self._service.region

    def credentials(self, principal: str) -> MockCredentials:
        """The credentials of :data:`MODEL_OWNER`, :data:`HOST` or :data:`ENCLAVE`."""
        try:
            return self._credentials[principal]
        except KeyError:
            raise ConfigError(
                f"mock KMS: no principal {principal!r} ({', '.join(sorted(PRINCIPALS))})"
            ) from None

    def start(self) -> MockKmsServer:
        if self._httpd is not None:
            raise ConfigError("mock KMS: already started")
        try:
            httpd = _HttpServer(self._listen, self._service)
        except OSError as e:
            raise ConfigError(
                f"mock KMS: cannot listen on {self._listen[0]}:{self._listen[1]}: {e}"
            ) from e
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="mock-kms", daemon=True
        )
        self._thread.start()
        log.info("mock KMS listening on %s", self.url)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise ConfigError("mock KMS: not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MockKmsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

_PROG = "mock-kms"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


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


def _build_parser() -> _Parser:
    home = default_home()
    p = _Parser(
        prog=_PROG,
        description="A local AWS KMS (JSON 1.1 protocol) for mock mode: loopback only, "
        "SigV4 checked against the principals' credentials in --state-dir, Recipient "
        "documents verified under --root.",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=home / "mock-kms",
        help=f"where keys are kept (default {home / 'mock-kms'})",
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
    """Run the mock KMS until SIGTERM or SIGINT; 0 on a clean stop, 2 on a config error."""
    try:
        args = _build_parser().parse_args(argv)
        if args.verbose:
            logging.basicConfig(
                level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                format="%(asctime)s %(name)s %(levelname)s %(message)s",
            )
        root = _load_root(args.root)
        server = MockKmsServer(args.state_dir, trusted_root=root, listen=_parse_listen(args.listen))
        server.start()
    except Error as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
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
