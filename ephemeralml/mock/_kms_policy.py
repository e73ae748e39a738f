"""Key policies for the mock KMS: parse, validate and evaluate, as AWS does, scoped down.

:func:`policy_decision` evaluates a key policy for one action by one principal in one
request context (``Effect``, ``Principal``, ``Action``, ``Resource`` with IAM
wildcards, ``Condition`` with the ``String*`` operators and their ``IfExists`` forms;
an explicit ``Deny`` wins, no matching ``Allow`` denies); :func:`validate_policy`
refuses a policy the evaluator does not understand; :func:`default_key_policy` is
AWS's default. ``_policy_from_text`` reads a policy sent in a request, with the errors
KMS answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..common._errors import ConfigError
from ._kms_principals import ACCOUNT_ID, ACCOUNT_ROOT, MockPrincipal, _glob
from ._kms_requests import _KmsError, _load_json

__all__ = [
    "MAX_KEY_POLICY_BYTES",
    "Decision",
    "MalformedPolicyError",
    "_policy_from_text",
    "default_key_policy",
    "evaluate_policy",
    "policy_decision",
    "validate_policy",
]


#: Largest key policy, in bytes: AWS KMS's key policy document size quota (32 KB).
MAX_KEY_POLICY_BYTES = 32 * 1024


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
