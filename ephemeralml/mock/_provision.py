"""Mock-mode provisioning: what a model owner and a build pipeline do, done on a laptop.

In production, three parties prepare a deployment: the model owner packages the model
under a KMS key (``ephemeral model package``) and puts it in the store; the build
publishes the enclave image's PCRs; the key's administrator writes a key policy that
lets only an enclave with those PCRs decrypt. ``ephemeral-host --mock`` does the same
steps against the local KMS server, so three terminals need no other flags:

1. the mock NSM's CA (shared with the enclave through ``$EPHEMERALML_HOME``);
2. a model-owner key (``mock-owner.pem``), its public half published in
   ``published/model-owners.txt`` (what the enclave image would carry);
3. a KMS key whose policy lets only an enclave with the *current* mock measurements
   decrypt (re-written at every start, as a redeploy would), done as the model owner's
   role (:data:`~ephemeralml.mock._kms.MODEL_OWNER`): the policy names the owner
   for administration and the enclave's role for ``kms:Decrypt`` under PCR conditions,
   and the host's role not at all;
4. the packaged all-MiniLM-L6-v2 in the local store, encrypted under that key.

Idempotent: a second start reuses what is there.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import KeyReleaseError
from ephemeralml.runtime._home import (
    MOCK_NSM_STATE,
    MOCK_OWNER_KEY,
    MOCK_OWNERS,
    MOCK_PROVISION,
    MOCK_ROOT,
    MOCK_STORE,
    write_atomic,
)

from ._kms import ENCLAVE, MODEL_OWNER, PRINCIPALS

__all__ = [
    "MOCK_OWNERS",
    "MOCK_STATE",
    "MockProvision",
    "enclave_key_policy",
    "ensure_mock_root",
    "provision_mock",
]

log = logging.getLogger("ephemeralml.host.provision")

#: Relative to the home: what provisioning created (the KMS key id). The path is
#: shared with ``ephemeral model package --mock`` through the runtime's home constants.
MOCK_STATE = MOCK_PROVISION
_OWNER_KEY = MOCK_OWNER_KEY


def ensure_mock_root(home: Path) -> bytes:
    """The mock NSM's root certificate (DER), creating the mock CA if needed."""
    from ephemeralml.mock._nsm import MockNsm

    nsm = MockNsm.load_or_create(home / MOCK_NSM_STATE, {})
    nsm.publish_root(home / MOCK_ROOT)
    return nsm.root_certificate_der


def enclave_key_policy(pcrs: dict[int, bytes]) -> str:
    """The production shape of a key policy, for the given measurements.

    The model owner's role may manage the key and wrap data keys, never decrypt. The
    enclave's role (on AWS the parent instance's role, whose credentials the host
    holds too) may ``kms:Decrypt`` only with a Recipient attestation whose PCR0, PCR1
    and PCR2 match: a Decrypt without a Recipient (the host's own call, with any
    credentials) has no such condition keys and is not allowed. No statement names
    the account, so no IAM policy can widen this, and no one but the owner may
    ``kms:PutKeyPolicy``. (Beware ``StringNotEquals``: on an absent key AWS evaluates
    it as true.)
    """
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "ephemeralml-enclave-only",
            "Statement": [
                {
                    "Sid": "KeyAdministration",
                    "Effect": "Allow",
                    "Principal": {"AWS": PRINCIPALS[MODEL_OWNER].arn},
                    "Action": [
                        "kms:DescribeKey",
                        "kms:GetKeyPolicy",
                        "kms:PutKeyPolicy",
                        "kms:GenerateDataKey",
                        "kms:Encrypt",
                    ],
                    "Resource": "*",
                },
                {
                    "Sid": "DecryptOnlyInTheAttestedEnclave",
                    "Effect": "Allow",
                    "Principal": {"AWS": PRINCIPALS[ENCLAVE].arn},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {
                            f"kms:RecipientAttestation:PCR{i}": pcrs[i].hex() for i in (0, 1, 2)
                        }
                    },
                },
            ],
        },
        indent=2,
    )


@dataclass(frozen=True)
class MockProvision:
    kms_key_id: str
    owner_public_key: bytes
    pcrs: dict[int, bytes]
    store: Path
    model_id: str
    packaged: bool  # True if the model was (re)packaged on this start


def _owner(home: Path) -> Any:
    from ephemeralml.client._package import generate_owner_key, load_owner_key

    path = home / _OWNER_KEY
    if not path.exists():
        generate_owner_key(path)
    key = load_owner_key(path)
    pub = key.public_key().public_bytes_raw()
    write_atomic(
        home / MOCK_OWNERS,
        f"# model-owner keys a mock enclave trusts (mock provisioning)\n{pub.hex()}\n".encode(),
    )
    return key


def _kms_key(home: Path, kms: Any) -> str:
    from botocore.exceptions import ClientError

    state = home / MOCK_STATE
    if state.exists():
        try:
            key_id = str(json.loads(state.read_text())["kms_key_id"])
            kms.describe_key(KeyId=key_id)
            return key_id
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NotFoundException":
                raise
        except (ValueError, KeyError):
            pass
    key_id = str(kms.create_key(Description="ephemeralml mock model key")["KeyMetadata"]["KeyId"])
    write_atomic(state, json.dumps({"kms_key_id": key_id}).encode())
    return key_id


def provision_mock(home: Path, kms: Any, *, store: Path | None = None) -> MockProvision:
    """Steps 1-4 of the module docstring.

    ``kms`` is a boto3 KMS client of the local server signed with the model owner's
    credentials (``MockKmsServer.credentials(MODEL_OWNER)``).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from ephemeralml.client._package import MANIFEST_FILE, default_sources, package_model
    from ephemeralml.client._upload import upload_local
    from ephemeralml.common._bundle import Manifest
    from ephemeralml.common._cose import decode_sign1
    from ephemeralml.enclave._measure import load_model_floors
    from ephemeralml.runtime._home import MOCK_FLOORS

    from ._nsm import mock_enclave_measurements

    store = store or home / MOCK_STORE
    ensure_mock_root(home)
    owner = _owner(home)
    pub = owner.public_key().public_bytes_raw()
    # The same floors file the mock enclave reads and measures (M11): the key policy
    # must name the PCRs of an enclave that enforces them.
    floors = load_model_floors(home / MOCK_FLOORS)
    pcrs = mock_enclave_measurements([pub], floors)
    try:
        key_id = _kms_key(home, kms)
        kms.put_key_policy(
            KeyId=key_id,
            PolicyName="default",
            Policy=enclave_key_policy(pcrs),
        )
    except (ClientError, BotoCoreError) as e:
        raise KeyReleaseError(f"mock provisioning: KMS: {e}") from e
    model_id, sources = default_sources()
    manifest_path = store / model_id / MANIFEST_FILE
    current = False
    if manifest_path.exists():
        # Our own store, our own key: read the manifest's key id to see whether it is
        # still the current key (the signature is checked by the enclave, not here).
        try:
            m = Manifest.from_cbor(
                decode_sign1(manifest_path.read_bytes(), what="manifest", max_bytes=16384).payload
            )
            current = m.kms_key_id.endswith(key_id) and m.release >= floors.get(model_id, 0)
        except Exception:  # a broken store entry is simply repackaged
            current = False
    if not current:
        tmp = Path(tempfile.mkdtemp(prefix=".provision-", dir=home))
        try:
            package_model(
                sources, model_id=model_id, version="mock", kms=kms, kms_key_id=key_id,
                owner_key=owner, out_dir=tmp / "bundle", release=max(1, floors.get(model_id, 0)),
            )  # fmt: skip
            upload_local(tmp / "bundle", store, model_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("packaged %s under KMS key %s into %s", model_id, key_id, store)
    return MockProvision(key_id, pub, pcrs, store, model_id, not current)
