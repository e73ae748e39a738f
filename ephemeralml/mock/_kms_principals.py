"""The mock account's identities: its roles, what their IAM policies allow, their credentials.

One account (:data:`ACCOUNT_ID`) in one default region (:data:`REGION`); three roles
(:data:`PRINCIPALS`: the model owner, the host, the enclave), each a
:class:`MockPrincipal` whose ``iam_actions`` stand in for its identity policy; and the
account itself (:data:`ACCOUNT_ROOT`), which a key policy can name. Each role's
credentials (:class:`MockCredentials`) are made on first start and kept in
``state_dir/credentials.json`` (:func:`load_or_create_credentials`). ``_glob`` is IAM's
wildcard matching, shared with the key-policy evaluator.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ephemeralml.runtime._home import MOCK_KMS_CREDENTIALS, write_atomic

from ..common._errors import ConfigError
from ._kms_requests import _load_json

__all__ = [
    "ACCOUNT_ID",
    "ACCOUNT_ROOT",
    "ENCLAVE",
    "HOST",
    "MODEL_OWNER",
    "PRINCIPALS",
    "REGION",
    "_CREDENTIALS_FILE",
    "MockCredentials",
    "MockPrincipal",
    "_glob",
    "load_or_create_credentials",
]


#: The mock's one account and region: key ARNs are
#: ``arn:aws:kms:us-east-1:111122223333:key/<id>`` (the AWS documentation's example account).
ACCOUNT_ID = "111122223333"
REGION = "us-east-1"


def _glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    # IAM wildcards: '*' any run of characters, '?' any one character; nothing else.
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


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

#: The file's name in the server's state folder; ``ephemeral-host --mock`` keeps that
#: folder at ``$EPHEMERALML_HOME/mock-kms``, where ``ephemeral model package --mock``
#: reads the model owner's credentials (the runtime's ``MOCK_KMS_CREDENTIALS``).
_CREDENTIALS_FILE = MOCK_KMS_CREDENTIALS.name
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
