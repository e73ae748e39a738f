"""The mock KMS's operations, without HTTP: a checked request body in, a JSON object out.

:class:`_Kms` authenticates a caller (:func:`verify_sigv4`), resolves the key a request
names, authorizes the action by the key's policy, verifies a ``Recipient``'s
attestation document (not its age: :data:`RECIPIENT_MAX_AGE_S`) and answers
``CreateKey``, ``DescribeKey``, ``GetKeyPolicy``, ``PutKeyPolicy``, ``Encrypt``,
``Decrypt`` and ``GenerateDataKey``, or raises the :class:`_KmsError` KMS would send.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..common._attestation import (
    AttestationPolicy,
    TrustedRoot,
    UnsafeAnyMeasurements,
    verify_attestation,
)
from ..common._errors import KeyReleaseError, VerificationError
from ._cms_build import MAX_RSA_BITS, MIN_RSA_BITS, build_recipient_envelope
from ._kms_auth import verify_sigv4
from ._kms_keys import (
    _KEY_MATERIAL_BYTES,
    _blob_key_id,
    _invalid_ciphertext,
    _Key,
    _KeyStore,
    _open,
    _seal,
)
from ._kms_policy import (
    Decision,
    _policy_from_text,
    default_key_policy,
    evaluate_policy,
    policy_decision,
)
from ._kms_principals import ACCOUNT_ID, MockCredentials, MockPrincipal
from ._kms_requests import (
    _DATA_KEY_SPECS,
    _ENCRYPTION_ALGORITHMS,
    _KEY_ENCRYPTION_ALGORITHMS,
    _KEY_SPECS,
    _KEY_USAGES,
    _MAX_ATTESTATION_DOCUMENT,
    _MAX_CIPHERTEXT_BLOB,
    _MAX_DESCRIPTION,
    _MAX_KEY_ID,
    _MAX_NUMBER_OF_BYTES,
    _MAX_PLAINTEXT,
    _ORIGINS,
    _Body,
    _KmsError,
    _load_json,
)

__all__ = ["RECIPIENT_MAX_AGE_S", "_Kms", "utc_now"]


#: Oldest Recipient document accepted, in seconds: 10 years, i.e. no freshness check.
#: AWS KMS checks a Recipient document's signature and PCRs but not its age (FACTS.md,
#: "AWS KMS with a Recipient"); the mock must not be stricter than the real thing, or
#: tests would pass here that fail on AWS. Certificate validity at *now* is still
#: checked (A5), which bounds a replay to the leaf's lifetime (about 3 hours).
RECIPIENT_MAX_AGE_S = 10 * 365 * 24 * 3600.0


_CONDITION_IMAGE_SHA384 = "kms:RecipientAttestation:ImageSha384"
_CONDITION_PCR = "kms:RecipientAttestation:PCR{}"


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


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
        """Check a Recipient and verify its document (not its age: RECIPIENT_MAX_AGE_S)."""
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
