"""The mock KMS's caller checks: SigV4 as AWS verifies it, and distinct principals.

Finding 8 of issue 7: in mock mode every caller was the account, and the provisioned key
policy let the host call PutKeyPolicy and then Decrypt; no signature was checked. Here
every request is signed by one of three roles (model owner, host, enclave), SigV4 is
recomputed with botocore's own code, and the provisioned policy
(:func:`ephemeralml.mock._provision.enclave_key_policy`) is held against each role.

Every server binds 127.0.0.1 on a free port and is closed by its fixture; every client
has short timeouts and no retries; raw requests have a socket timeout. No test reads the
wall clock for an assertion: the SigV4 window is tested against a fixed signing clock.

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import stat
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._cms import open_recipient_envelope
from ephemeralml.common._errors import ConfigError
from ephemeralml.mock._kms import (
    ACCOUNT_ROOT,
    ENCLAVE,
    HOST,
    MODEL_OWNER,
    PRINCIPALS,
    Decision,
    MockCredentials,
    MockKmsServer,
    default_key_policy,
    load_or_create_credentials,
    policy_decision,
)
from ephemeralml.mock._nsm import MockNsm
from ephemeralml.mock._provision import enclave_key_policy

NSM_TIME = datetime(2030, 1, 1, 8, 0, 0, tzinfo=UTC)
#: The server's SigV4 clock in the window tests (the mock NSM keeps its own, NSM_TIME).
SIGNING_NOW = datetime(2031, 6, 1, 12, 0, 0, tzinfo=UTC)
PCRS = {i: hashlib.sha384(f"pcr{i}".encode()).digest() for i in (0, 1, 2, 8)}
OTHER = {**PCRS, 0: hashlib.sha384(b"another image").digest()}
BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)
BAD_TOKEN = "The security token included in the request is invalid."
STS = "arn:aws:sts::111122223333:assumed-role"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def nsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsm")


@pytest.fixture(scope="module")
def nsm(nsm_dir: Path) -> MockNsm:
    return MockNsm.load_or_create(nsm_dir, PCRS, clock=lambda: NSM_TIME)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def server(tmp_path: Path, nsm: MockNsm) -> Iterator[MockKmsServer]:
    with MockKmsServer(
        tmp_path / "kms",
        trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        clock=lambda: NSM_TIME,
    ) as s:
        yield s


@pytest.fixture
def fixed(tmp_path: Path, nsm: MockNsm) -> Iterator[MockKmsServer]:
    """A server whose SigV4 clock is SIGNING_NOW (requests are signed by hand)."""
    with MockKmsServer(
        tmp_path / "kms-fixed",
        trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        clock=lambda: NSM_TIME,
        signing_clock=lambda: SIGNING_NOW,
    ) as s:
        yield s


def client(url: str, creds: MockCredentials | Mapping[str, str], region: str = "us-east-1") -> Any:
    kwargs = creds.boto3_kwargs() if isinstance(creds, MockCredentials) else dict(creds)
    return boto3.client(
        "kms",
        region_name=region,
        endpoint_url=url,
        config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 1}),
        **kwargs,
    )


def as_(server: MockKmsServer, principal: str) -> Any:
    return client(server.url, server.credentials(principal))


def code_and_message(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = e.value.response["Error"]
    return str(err["Code"]), str(err["Message"])


def sign(
    server: MockKmsServer,
    body: bytes,
    *,
    at: datetime,
    creds: MockCredentials | None = None,
    region: str = "us-east-1",
    service: str = "kms",
    target: str = "TrentService.CreateKey",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """SigV4 headers for ``body`` signed at ``at``, with botocore's signer pieces."""
    creds = creds or server.credentials(MODEL_OWNER)
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    request = AWSRequest(
        method="POST",
        url=server.url + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": target,
            "X-Amz-Date": stamp,
            "X-Amz-Security-Token": creds.session_token,
            **(extra or {}),
        },
    )
    request.context["timestamp"] = stamp
    signer = SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        service,
        region,
    )
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    headers = dict(request.headers.items())
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def post(
    server: MockKmsServer, body: bytes, headers: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def recipient(nsm: MockNsm, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    doc = nsm.get_attestation_doc(public_key=spki(key), user_data=None, nonce=None)
    return {"AttestationDocument": doc, "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}


# ===========================================================================
# SigV4 through boto3: codes as AWS KMS sends them
# ===========================================================================


def test_each_principal_signs_and_is_told_apart(server: MockKmsServer) -> None:
    key_id = as_(server, MODEL_OWNER).create_key()["KeyMetadata"]["KeyId"]
    arn = f"arn:aws:kms:us-east-1:111122223333:key/{key_id}"
    for name, role in ((HOST, "ephemeralml-host"), (ENCLAVE, "ephemeralml-enclave")):
        with pytest.raises(ClientError) as e:
            as_(server, name).describe_key(KeyId=key_id)
        assert code_and_message(e) == (
            "AccessDeniedException",
            f"User: {STS}/{role}/mock is not authorized to perform: kms:DescribeKey on "
            f"resource: {arn} because no resource-based policy allows the kms:DescribeKey action",
        )


def test_unknown_access_key_id_is_unrecognized(server: MockKmsServer) -> None:
    stranger = {"aws_access_key_id": "ASIAUNKNOWNUNKNOWN12", "aws_secret_access_key": "x" * 40}
    with pytest.raises(ClientError) as e:
        client(server.url, stranger).create_key()
    assert code_and_message(e) == ("UnrecognizedClientException", BAD_TOKEN)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["missing", "wrong"])
def test_session_token_must_be_the_principals(server: MockKmsServer, token: str | None) -> None:
    owner = server.credentials(MODEL_OWNER)
    kwargs = {
        "aws_access_key_id": owner.access_key_id,
        "aws_secret_access_key": owner.secret_access_key,
    }
    if token is not None:
        kwargs["aws_session_token"] = token
    with pytest.raises(ClientError) as e:
        client(server.url, kwargs).create_key()
    assert code_and_message(e) == ("UnrecognizedClientException", BAD_TOKEN)


def test_another_principals_token_does_not_pass(server: MockKmsServer) -> None:
    owner, host = server.credentials(MODEL_OWNER), server.credentials(HOST)
    mixed = {**owner.boto3_kwargs(), "aws_session_token": host.session_token}
    with pytest.raises(ClientError) as e:
        client(server.url, mixed).create_key()
    assert code_and_message(e) == ("UnrecognizedClientException", BAD_TOKEN)


def test_wrong_secret_is_an_invalid_signature(server: MockKmsServer) -> None:
    owner = server.credentials(MODEL_OWNER)
    # Another last character, whatever the generated secret ends with.
    last = "y" if owner.secret_access_key.endswith("x") else "x"
    forged = {**owner.boto3_kwargs(), "aws_secret_access_key": owner.secret_access_key[:-1] + last}
    assert forged["aws_secret_access_key"] != owner.secret_access_key
    with pytest.raises(ClientError) as e:
        client(server.url, forged).create_key()
    assert code_and_message(e) == ("InvalidSignatureException", BAD_SIGNATURE)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_another_region_is_refused(server: MockKmsServer) -> None:
    with pytest.raises(ClientError) as e:
        client(server.url, server.credentials(MODEL_OWNER), region="eu-west-1").create_key()
    assert code_and_message(e) == (
        "InvalidSignatureException",
        "Credential should be scoped to a valid region, not 'eu-west-1'. ",
    )


def test_server_region_is_configurable(tmp_path: Path, nsm: MockNsm) -> None:
    with MockKmsServer(
        tmp_path / "eu",
        trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        region="eu-west-1",
    ) as eu:
        made = client(eu.url, eu.credentials(MODEL_OWNER), region="eu-west-1").create_key()
        assert made["KeyMetadata"]["Arn"].startswith("arn:aws:kms:eu-west-1:111122223333:key/")
        with pytest.raises(ClientError) as e:
            as_(eu, MODEL_OWNER).create_key()  # signed for us-east-1
        assert code_and_message(e)[1] == (
            "Credential should be scoped to a valid region, not 'us-east-1'. "
        )
    with pytest.raises(ConfigError, match="^mock KMS: 'moon-1' is not an AWS region name$"):
        MockKmsServer(
            tmp_path / "x",
            trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der),
            region="moon-1",
        )


# ===========================================================================
# SigV4 by hand: the clock window, the scope, what the signature covers
# ===========================================================================


@pytest.mark.parametrize("offset_s", [-300, 0, 300])
def test_clock_within_five_minutes_is_accepted(fixed: MockKmsServer, offset_s: int) -> None:
    body = b"{}"
    status, out = post(fixed, body, sign(fixed, body, at=SIGNING_NOW + timedelta(seconds=offset_s)))
    assert status == 200 and "KeyMetadata" in out


def test_clock_skew_beyond_five_minutes_is_refused(fixed: MockKmsServer) -> None:
    body = b"{}"
    status, out = post(fixed, body, sign(fixed, body, at=SIGNING_NOW - timedelta(seconds=301)))
    assert (status, out) == (
        400,
        {
            "__type": "InvalidSignatureException",
            "message": "Signature expired: 20310601T115459Z is now earlier than "
            "20310601T115500Z (20310601T120000Z - 5 min.)",
        },
    )
    status, out = post(fixed, body, sign(fixed, body, at=SIGNING_NOW + timedelta(seconds=301)))
    assert (status, out) == (
        400,
        {
            "__type": "InvalidSignatureException",
            "message": "Signature not yet current: 20310601T120501Z is still later than "
            "20310601T120500Z (20310601T120000Z + 5 min.)",
        },
    )


def test_wrong_service_in_scope_is_refused(fixed: MockKmsServer) -> None:
    body = b"{}"
    status, out = post(fixed, body, sign(fixed, body, at=SIGNING_NOW, service="s3"))
    assert (status, out["__type"], out["message"]) == (
        400,
        "InvalidSignatureException",
        "Credential should be scoped to correct service: 'kms'. ",
    )


def test_scope_date_must_match_the_request_date(fixed: MockKmsServer) -> None:
    body = b"{}"
    headers = sign(fixed, body, at=SIGNING_NOW)
    headers["Authorization"] = headers["Authorization"].replace("/20310601/", "/20310602/")
    status, out = post(fixed, body, headers)
    assert (status, out["__type"], out["message"]) == (
        400,
        "InvalidSignatureException",
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
        "from HTTP: '20310602' != '20310601', from 'X-Amz-Date'.",
    )


def test_signature_covers_body_target_and_date(fixed: MockKmsServer) -> None:
    body = b'{"Description": "aaaa"}'
    good = sign(fixed, body, at=SIGNING_NOW)
    flipped = "1" if good["Authorization"].endswith("0") else "0"  # last hex digit changed
    for changed_body, headers in (
        (b'{"Description": "bbbb"}', good),  # same length, other body
        (body, {**good, "X-Amz-Target": "TrentService.DescribeKey"}),  # signed header
        (body, {**good, "X-Amz-Date": "20310601T120001Z"}),  # the signed date
        (body, {**good, "Authorization": good["Authorization"][:-1] + flipped}),
    ):
        if headers is good and changed_body is body:
            continue
        status, out = post(fixed, changed_body, headers)
        assert (status, out) == (
            400,
            {"__type": "InvalidSignatureException", "message": BAD_SIGNATURE},
        ), headers
    # A header the client did not sign may change (proxies add and rewrite them).
    status, _ = post(fixed, body, {**good, "User-Agent": "something else"})
    assert status == 200


def test_client_declared_payload_hash_is_not_trusted(fixed: MockKmsServer) -> None:
    # botocore puts a declared X-Amz-Content-SHA256 in the canonical request; the server
    # recomputes the hash over the body it received instead.
    signed_for = b'{"Description": "signed"}'
    sent = b'{"Description": "swapped!!"}'
    declared = {"X-Amz-Content-SHA256": hashlib.sha256(signed_for).hexdigest()}
    headers = sign(fixed, sent, at=SIGNING_NOW, extra=declared)
    status, out = post(fixed, sent, headers)
    assert (status, out["__type"]) == (400, "InvalidSignatureException")


def test_missing_and_malformed_authorization(fixed: MockKmsServer) -> None:
    body = b"{}"
    good = sign(fixed, body, at=SIGNING_NOW)
    unsigned = {k: v for k, v in good.items() if k != "Authorization"}
    cases: list[tuple[dict[str, str], str, str]] = [
        (unsigned, "MissingAuthenticationTokenException", "Missing Authentication Token"),
        (
            {**unsigned, "Authorization": "AWS4-HMAC-SHA256 Credential=x"},
            "IncompleteSignatureException",
            "Authorization header requires 'Signature' parameter. "
            "Authorization header requires 'SignedHeaders' parameter.",
        ),
        (
            {**unsigned, "Authorization": "Bearer abc"},
            "IncompleteSignatureException",
            "Authorization header requires the 'AWS4-HMAC-SHA256' algorithm.",
        ),
        (
            {**good, "Authorization": good["Authorization"].replace("/aws4_request", "")},
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, "
            "e.g. keyid/date/region/service/term, got '",
        ),
        (
            {k: v for k, v in good.items() if k != "X-Amz-Date"},
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ),
        (
            {**good, "Authorization": good["Authorization"].replace("SignedHeaders=", "SignedHeaders=x-amz-date;")
             .replace(";host;", ";")},
            "IncompleteSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ),
    ]  # fmt: skip
    for headers, code, message in cases:
        status, out = post(fixed, body, headers)
        assert status == 400 and out["__type"] == code, (headers, out)
        assert out["message"].startswith(message), out


def test_credentials_are_distinct_private_and_kept(tmp_path: Path, nsm: MockNsm) -> None:
    root = TrustedRoot.unsafe_mock(nsm.root_certificate_der)
    with MockKmsServer(tmp_path / "s", trusted_root=root) as first:
        creds = {name: first.credentials(name) for name in PRINCIPALS}
        key_id = as_(first, MODEL_OWNER).create_key()["KeyMetadata"]["KeyId"]
    assert len({c.access_key_id for c in creds.values()}) == 3
    assert len({c.secret_access_key for c in creds.values()}) == 3
    assert all(
        c.access_key_id.startswith("ASIA") and len(c.access_key_id) == 20 for c in creds.values()
    )
    path = tmp_path / "s" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_credentials(tmp_path / "s") == creds
    with MockKmsServer(tmp_path / "s", trusted_root=root) as second:
        assert second.credentials(MODEL_OWNER) == creds[MODEL_OWNER]
        as_(second, MODEL_OWNER).describe_key(KeyId=key_id)
        with pytest.raises(
            ConfigError, match=r"^mock KMS: no principal 'root' \(enclave, host, model-owner\)$"
        ):
            second.credentials("root")
    # A different state folder has its own credentials: they do not open this one.
    with MockKmsServer(tmp_path / "other", trusted_root=root) as other:
        assert other.credentials(MODEL_OWNER).access_key_id != creds[MODEL_OWNER].access_key_id
    assert creds[MODEL_OWNER].secret_access_key not in repr(creds[MODEL_OWNER])
    assert creds[MODEL_OWNER].session_token not in repr(creds[MODEL_OWNER])


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"format": "something-else/1", "principals": {}}),
        json.dumps({"format": "ephemeralml-mock-kms-credentials/1", "principals": {"host": {}}}),
    ],
)
def test_corrupt_credentials_file_stops_the_start(tmp_path: Path, nsm: MockNsm, text: str) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "credentials.json").write_text(text)
    with pytest.raises(
        ConfigError, match="^mock KMS: credentials file .* is unreadable or corrupt"
    ):
        MockKmsServer(
            tmp_path / "s", trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der)
        )


# ===========================================================================
# Principals against the provisioned key policy (finding 8)
# ===========================================================================


@pytest.fixture
def provisioned(server: MockKmsServer) -> tuple[str, bytes]:
    """A key under the policy ephemeral-host --mock writes, and a data key wrapped by it."""
    owner = as_(server, MODEL_OWNER)
    key_id: str = owner.create_key()["KeyMetadata"]["KeyId"]
    # No lockout bypass: the owner keeps PutKeyPolicy under the new policy.
    owner.put_key_policy(KeyId=key_id, PolicyName="default", Policy=enclave_key_policy(PCRS))
    blob: bytes = owner.generate_data_key(KeyId=key_id, KeySpec="AES_256")["CiphertextBlob"]
    return key_id, blob


def denied(server: MockKmsServer, principal: str, action: str, key_id: str) -> str:
    role = PRINCIPALS[principal].arn.rsplit("/", 1)[1]
    return (
        f"User: {STS}/{role}/mock is not authorized to perform: {action} on resource: "
        f"arn:aws:kms:us-east-1:111122223333:key/{key_id} because no resource-based policy "
        f"allows the {action} action"
    )


@pytest.mark.parametrize("principal", [HOST, ENCLAVE])
def test_host_cannot_rewrite_the_key_policy(
    server: MockKmsServer, provisioned: tuple[str, bytes], principal: str
) -> None:
    # The host holds its own credentials and the enclave's (it hands them over).
    key_id, _ = provisioned
    open_door = json.dumps(
        {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}
    )
    with pytest.raises(ClientError) as e:
        as_(server, principal).put_key_policy(
            KeyId=key_id,
            PolicyName="default",
            Policy=open_door,
            BypassPolicyLockoutSafetyCheck=True,
        )
    assert code_and_message(e) == (
        "AccessDeniedException",
        denied(server, principal, "kms:PutKeyPolicy", key_id),
    )
    policy = as_(server, MODEL_OWNER).get_key_policy(KeyId=key_id)["Policy"]
    assert policy == enclave_key_policy(PCRS)


@pytest.mark.parametrize("principal", [HOST, ENCLAVE, MODEL_OWNER])
def test_no_one_decrypts_without_a_recipient(
    server: MockKmsServer, provisioned: tuple[str, bytes], principal: str
) -> None:
    key_id, blob = provisioned
    with pytest.raises(ClientError) as e:
        as_(server, principal).decrypt(CiphertextBlob=blob, KeyId=key_id)
    assert code_and_message(e) == (
        "AccessDeniedException",
        denied(server, principal, "kms:Decrypt", key_id),
    )


def test_only_the_enclave_role_with_a_matching_recipient_decrypts(
    server: MockKmsServer,
    provisioned: tuple[str, bytes],
    nsm: MockNsm,
    nsm_dir: Path,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    key_id, blob = provisioned
    good = recipient(nsm, rsa_key)
    out = as_(server, ENCLAVE).decrypt(CiphertextBlob=blob, KeyId=key_id, Recipient=good)
    assert "Plaintext" not in out
    assert len(open_recipient_envelope(out["CiphertextForRecipient"], rsa_key)) == 32
    # The same valid document under the host's or the owner's credentials: denied.
    for principal in (HOST, MODEL_OWNER):
        with pytest.raises(ClientError) as e:
            as_(server, principal).decrypt(CiphertextBlob=blob, KeyId=key_id, Recipient=good)
        assert code_and_message(e) == (
            "AccessDeniedException",
            denied(server, principal, "kms:Decrypt", key_id),
        )
    # The enclave's role with a genuine document of another image (same mock CA): denied.
    impostor = MockNsm.load_or_create(nsm_dir, OTHER, clock=lambda: NSM_TIME)
    assert impostor.root_certificate_der == nsm.root_certificate_der
    with pytest.raises(ClientError) as e:
        as_(server, ENCLAVE).decrypt(
            CiphertextBlob=blob, KeyId=key_id, Recipient=recipient(impostor, rsa_key)
        )
    assert code_and_message(e) == (
        "AccessDeniedException",
        denied(server, ENCLAVE, "kms:Decrypt", key_id),
    )


def test_owner_administers_but_the_lockout_check_uses_the_caller(
    server: MockKmsServer, provisioned: tuple[str, bytes]
) -> None:
    key_id, _ = provisioned
    owner = as_(server, MODEL_OWNER)
    assert owner.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id
    assert owner.encrypt(KeyId=key_id, Plaintext=b"x")["KeyId"].endswith(key_id)
    # A policy that names only the host for PutKeyPolicy would lock the owner out.
    host_admin = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": PRINCIPALS[HOST].arn},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ]
        }
    )
    with pytest.raises(ClientError) as e:
        owner.put_key_policy(KeyId=key_id, PolicyName="default", Policy=host_admin)
    assert code_and_message(e) == (
        "MalformedPolicyDocumentException",
        "The new key policy will not allow you to update the key policy in the future.",
    )


def test_default_policy_delegates_to_each_roles_iam(
    server: MockKmsServer, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    # AWS's default key policy names the account: each role gets what its IAM policy
    # allows. The enclave (instance) role's IAM allows kms:Decrypt, so under the default
    # policy the host, holding those credentials, decrypts in clear: why the provisioned
    # policy names no account.
    owner = as_(server, MODEL_OWNER)
    key_id = owner.create_key()["KeyMetadata"]["KeyId"]
    made = owner.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    out = as_(server, ENCLAVE).decrypt(CiphertextBlob=made["CiphertextBlob"])
    assert out["Plaintext"] == made["Plaintext"]
    with pytest.raises(ClientError) as e:
        as_(server, HOST).decrypt(CiphertextBlob=made["CiphertextBlob"])
    assert code_and_message(e) == (
        "AccessDeniedException",
        denied(server, HOST, "kms:Decrypt", key_id),
    )
    with pytest.raises(ClientError) as e:
        as_(server, ENCLAVE).put_key_policy(
            KeyId=key_id, PolicyName="default", Policy=default_key_policy()
        )
    assert code_and_message(e)[0] == "AccessDeniedException"


# ===========================================================================
# The evaluator with principals (pure)
# ===========================================================================


def stmt(principal: Any, *, effect: str = "Allow", action: str = "kms:Decrypt") -> dict[str, Any]:
    return {
        "Statement": [{"Effect": effect, "Principal": principal, "Action": action, "Resource": "*"}]
    }


def test_principal_matching() -> None:
    owner, host, enclave = (PRINCIPALS[n] for n in (MODEL_OWNER, HOST, ENCLAVE))
    named = stmt({"AWS": enclave.arn})
    assert policy_decision(named, "kms:Decrypt", {}, principal=enclave) is Decision.ALLOW
    assert policy_decision(named, "kms:Decrypt", {}, principal=host) is Decision.IMPLICIT_DENY
    assert policy_decision(named, "kms:Decrypt", {}, principal=owner) is Decision.IMPLICIT_DENY
    for account in ("111122223333", "arn:aws:iam::111122223333:root"):
        p = stmt({"AWS": account})
        # The account delegates to IAM: the enclave role's IAM allows Decrypt, the
        # host's allows nothing, the owner's everything; the account itself is allowed.
        assert policy_decision(p, "kms:Decrypt", {}, principal=enclave) is Decision.ALLOW
        assert policy_decision(p, "kms:Decrypt", {}, principal=host) is Decision.IMPLICIT_DENY
        assert policy_decision(p, "kms:Decrypt", {}, principal=ACCOUNT_ROOT) is Decision.ALLOW
        p = stmt({"AWS": account}, action="kms:PutKeyPolicy")
        assert (
            policy_decision(p, "kms:PutKeyPolicy", {}, principal=enclave) is Decision.IMPLICIT_DENY
        )
        assert policy_decision(p, "kms:PutKeyPolicy", {}, principal=owner) is Decision.ALLOW
        # A Deny naming the account binds every role of it, whatever its IAM says.
        both = {
            "Statement": stmt("*")["Statement"] + stmt({"AWS": account}, effect="Deny")["Statement"]
        }
        assert policy_decision(both, "kms:Decrypt", {}, principal=host) is Decision.EXPLICIT_DENY
    assert policy_decision(stmt("*"), "kms:Decrypt", {}, principal=host) is Decision.ALLOW
    assert policy_decision(stmt({"AWS": "*"}), "kms:Decrypt", {}, principal=host) is Decision.ALLOW
    service = stmt({"Service": "ec2.amazonaws.com"})
    for who in (owner, host, enclave, ACCOUNT_ROOT):
        assert policy_decision(service, "kms:Decrypt", {}, principal=who) is Decision.IMPLICIT_DENY


def test_provisioned_policy_by_principal_and_context() -> None:
    policy = json.loads(enclave_key_policy(PCRS))
    ctx = {f"kms:RecipientAttestation:PCR{i}": PCRS[i].hex() for i in (0, 1, 2)}
    enclave, host, owner = PRINCIPALS[ENCLAVE], PRINCIPALS[HOST], PRINCIPALS[MODEL_OWNER]
    assert policy_decision(policy, "kms:Decrypt", ctx, principal=enclave) is Decision.ALLOW
    assert policy_decision(policy, "kms:Decrypt", {}, principal=enclave) is Decision.IMPLICIT_DENY
    for p in (host, owner, ACCOUNT_ROOT):
        assert policy_decision(policy, "kms:Decrypt", ctx, principal=p) is Decision.IMPLICIT_DENY
    for p in (host, enclave, ACCOUNT_ROOT):
        assert (
            policy_decision(policy, "kms:PutKeyPolicy", {}, principal=p) is Decision.IMPLICIT_DENY
        )
    assert policy_decision(policy, "kms:PutKeyPolicy", {}, principal=owner) is Decision.ALLOW
    assert not any("111122223333:root" in json.dumps(s["Principal"]) for s in policy["Statement"])
