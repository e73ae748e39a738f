"""Offline checks of ``infra/terraform`` (no terraform binary, no AWS account).

Two kinds. checkov runs over the whole tree and must find nothing that is not waived
in the code with ``#checkov:skip=CKV_...:reason``; every waiver has a reason, and
each is needed (with the waivers removed, exactly the waived checks fail). Then every
``.tf`` is parsed with python-hcl2 and the settings the security argument rests on are
asserted exactly: who may ``kms:Decrypt`` the model key and under which condition,
IMDSv2, enclave support, the bucket's public access block and TLS-only policy, the
security groups, the load balancer's health check. The policy checks are functions
tested against broken policies too, so that they are known to fail when they should.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from ephemeralml.runtime._ports import DEFAULT_BASE_PORT, Ports

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "infra" / "terraform"
MODULE = TF / "modules" / "ephemeralml"
EXAMPLE = TF / "examples" / "single-region"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
CHECKOV_TIMEOUT_S = 300
SHELL_TIMEOUT_S = 60

PCR0_VAR = "${var.enclave_pcr0}"
PCR8_FOR_EACH = "${var.enclave_pcr8 == null ? [] : [var.enclave_pcr8]}"
IMAGE_SHA384 = "kms:RecipientAttestation:ImageSha384"
PCR8 = "kms:RecipientAttestation:PCR8"
INSTANCE_ROLE_ARN = "${aws_iam_role.instance.arn}"
OWNER_ARN = "${var.model_owner_arn}"

#: Every waiver in the code: (check, resource address). Adding one is a decision, so
#: it is listed here as well as justified where it is made.
WAIVERS = {
    ("CKV_AWS_341", "aws_launch_template.host"),
    ("CKV_AWS_91", "aws_lb.this"),
    ("CKV_AWS_145", "aws_s3_bucket.bundles"),
    ("CKV_AWS_144", "aws_s3_bucket.bundles"),
    ("CKV2_AWS_62", "aws_s3_bucket.bundles"),
    ("CKV_AWS_145", "aws_s3_bucket.access_logs"),
    ("CKV_AWS_144", "aws_s3_bucket.access_logs"),
    ("CKV2_AWS_62", "aws_s3_bucket.access_logs"),
}

_SKIP = re.compile(r"#\s*checkov:skip=([A-Za-z0-9_]+)(?::(.*))?$")
_BLOCK = re.compile(r'^(resource|data)\s+"([^"]+)"\s+"([^"]+)"')


# --- parsing ----------------------------------------------------------------------------


def _parse(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    with path.open(encoding="utf-8") as f:
        parsed: dict[str, Any] = hcl2.load(f, serialization_options=options)
    return parsed


def _load_dir(folder: Path) -> dict[str, list[Any]]:
    """Every top-level block kind of a module's .tf files, merged."""
    merged: dict[str, list[Any]] = {}
    files = sorted(folder.glob("*.tf"))
    assert files, f"no .tf files in {folder}"
    for path in files:
        for kind, blocks in _parse(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def _labelled(parsed: dict[str, list[Any]], kind: str, type_: str) -> dict[str, Any]:
    """``resource``/``data`` blocks of one type, by name."""
    found: dict[str, Any] = {}
    for block in parsed.get(kind, []):
        for name, body in block.get(type_, {}).items():
            assert name not in found, f"{kind} {type_}.{name} defined twice"
            found[name] = body
    return found


def _named(parsed: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    """``variable``/``output``/``module`` blocks, by name."""
    found: dict[str, Any] = {}
    for block in parsed.get(kind, []):
        found.update(block)
    return found


def _one(body: Any, key: str) -> Any:
    """A nested block that must appear exactly once."""
    value = body[key]
    assert isinstance(value, list) and len(value) == 1, f"{key}: {value!r}"
    return value[0]


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    return _load_dir(MODULE)


@pytest.fixture(scope="module")
def example() -> dict[str, list[Any]]:
    return _load_dir(EXAMPLE)


def _policy_docs(parsed: dict[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: body["statement"]
        for name, body in _labelled(parsed, "data", "aws_iam_policy_document").items()
    }


def _statements(parsed: dict[str, list[Any]], doc: str) -> dict[str, dict[str, Any]]:
    statements = _policy_docs(parsed)[doc]
    by_sid = {s["sid"]: s for s in statements}
    assert len(by_sid) == len(statements), f"{doc}: every statement needs its own sid"
    return by_sid


# --- the policy rules, as functions that can be shown to fail ----------------------------


def _actions_match(actions: list[str], action: str) -> bool:
    """Whether IAM action patterns (with * and ?) cover ``action``, case-insensitively."""
    return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions)


def _conditions(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return list(statement.get("condition", []))


def _dynamic_conditions(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return [d["condition"] for d in statement.get("dynamic", []) if "condition" in d]


def _is_attested(statement: dict[str, Any]) -> bool:
    """Exactly the attestation condition: StringEqualsIgnoreCase on ImageSha384 = the
    PCR0 variable, and PCR8 = the PCR8 variable when that is set, nothing else."""
    conditions = _conditions(statement)
    dynamic = _dynamic_conditions(statement)
    return conditions == [
        {"test": "StringEqualsIgnoreCase", "variable": IMAGE_SHA384, "values": PCR0_VAR}
    ] and dynamic == [
        {
            "for_each": PCR8_FOR_EACH,
            "content": [
                {
                    "test": "StringEqualsIgnoreCase",
                    "variable": PCR8,
                    "values": ["${condition.value}"],
                }
            ],
        }
    ]


def _principals(statement: dict[str, Any]) -> list[str]:
    return [i for p in statement.get("principals", []) for i in p["identifiers"]]


def policy_problems(statements: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a policy document for the model key's sake (empty: nothing).

    - an Allow with NotAction (it allows everything it does not name);
    - an Allow that covers kms:Decrypt or kms:ReEncryptFrom without exactly the
      attestation condition; an Allow of kms:CreateGrant (a grant has no such
      condition);
    - any negated condition operator (StringNotEquals and kin are true when the key is
      absent, as it is in a Decrypt without a Recipient);
    - an Allow to the model owner that covers Decrypt.
    """
    problems = []
    for s in statements:
        sid = s.get("sid", "?")
        for c in [*_conditions(s), *(c for d in _dynamic_conditions(s) for c in d["content"])]:
            if "Not" in c["test"]:
                problems.append(f"{sid}: negated operator {c['test']}")
        if s.get("effect", "Allow") != "Allow":
            continue
        if "not_actions" in s:
            problems.append(f"{sid}: Allow with NotAction")
        actions = list(s.get("actions", []))
        if _actions_match(actions, "kms:CreateGrant"):
            problems.append(f"{sid}: allows kms:CreateGrant")
        for action in ("kms:Decrypt", "kms:ReEncryptFrom"):
            if _actions_match(actions, action):
                if not _is_attested(s):
                    problems.append(f"{sid}: {action} without the attestation condition")
                if OWNER_ARN in _principals(s):
                    problems.append(f"{sid}: the model owner may {action}")
    return problems


# --- checkov ------------------------------------------------------------------------------


def _waivers() -> list[tuple[Path, int, str, str]]:
    """(file, line, check, reason) of every ``checkov:skip`` in the tree."""
    found = []
    for path in sorted(TF.rglob("*.tf")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = _SKIP.search(line)
            if m:
                found.append((path, number, m.group(1), (m.group(2) or "").strip()))
    return found


def _waived_resources() -> set[tuple[str, str]]:
    """(check, resource address) of every waiver, from the block each sits in."""
    pairs = set()
    for path in sorted(TF.rglob("*.tf")):
        current = None
        for line in path.read_text(encoding="utf-8").splitlines():
            block = _BLOCK.match(line)
            if block:
                kind, type_, name = block.groups()
                current = f"{type_}.{name}" if kind == "resource" else f"data.{type_}.{name}"
            m = _SKIP.search(line)
            if m:
                assert current is not None, f"{path}: a waiver outside any block"
                pairs.add((m.group(1), current))
    return pairs


def _checkov(directory: Path) -> dict[str, Any]:
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV} is missing: run scripts/_tools_venv.sh (./scripts/test.sh does)")
    env = {**os.environ, "LOG_LEVEL": "ERROR"}
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(directory),
            "--framework",
            "terraform",
            "--compact",
            "--output",
            "json",
            "--skip-download",  # offline: no guidelines or policies from the platform
        ],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        env=env,
        cwd=ROOT,
    )
    # 0: nothing failed, 1: something failed; anything else is checkov itself failing.
    assert proc.returncode in (0, 1), f"checkov exit {proc.returncode}: {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one report per framework when there are several
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    assert isinstance(report, dict)
    return report


def _address(result: dict[str, Any]) -> str:
    """The resource address without the module path (module.ephemeralml.aws_lb.this)."""
    return re.sub(r"^(module\.[^.]+\.)+", "", str(result["resource"]))


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return _checkov(TF)


def test_checkov_finds_nothing_unwaived(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{r['check_id']} {r['resource']} ({r['file_path']}): {r['check_name']}"
        for r in checkov_report["results"]["failed_checks"]
    ]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    # It really read the module through the example: every resource, many checks.
    assert summary["resource_count"] >= 30, summary
    assert summary["passed"] >= 100, summary


def test_every_waiver_has_a_reason_and_is_the_listed_one(
    checkov_report: dict[str, Any],
) -> None:
    waivers = _waivers()
    assert waivers, "expected the waivers listed in WAIVERS"
    for path, line, check, reason in waivers:
        where = f"{path.relative_to(ROOT)}:{line}"
        assert re.fullmatch(r"CKV2?_AWS_[0-9]+", check), f"{where}: {check} is not a check id"
        assert len(reason) >= 40 and " " in reason, f"{where}: {check} needs a reason"
    assert _waived_resources() == WAIVERS
    skipped = checkov_report["results"]["skipped_checks"]
    assert {(r["check_id"], _address(r)) for r in skipped} == WAIVERS
    for r in skipped:
        assert len((r["check_result"].get("suppress_comment") or "").strip()) >= 40, r["check_id"]


def test_every_waiver_is_needed(tmp_path: Path) -> None:
    """With the waivers removed, exactly the waived checks fail: none is left over."""
    copy_root = tmp_path / "terraform"
    shutil.copytree(TF, copy_root)
    for path in copy_root.rglob("*.tf"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(li for li in lines if not _SKIP.search(li)), encoding="utf-8")
    report = _checkov(copy_root)
    failed = {(r["check_id"], _address(r)) for r in report["results"]["failed_checks"]}
    assert failed == WAIVERS


# --- the model key ------------------------------------------------------------------------


def test_key_policy_releases_the_key_only_to_the_attested_enclave(
    module: dict[str, list[Any]],
) -> None:
    key = _labelled(module, "resource", "aws_kms_key")["model"]
    assert key["policy"] == "${data.aws_iam_policy_document.model_key.json}"
    assert key["enable_key_rotation"] is True
    assert key["bypass_policy_lockout_safety_check"] is False
    assert key["multi_region"] is False

    by_sid = _statements(module, "model_key")
    assert set(by_sid) == {
        "KeyAdministrationWithoutUse",
        "ModelOwnerWrapsOnly",
        "DecryptOnlyInTheAttestedEnclave",
        "NoDecryptWithoutAttestation",
        "NoGrantsNoReEncrypt",
    }

    decrypt = by_sid["DecryptOnlyInTheAttestedEnclave"]
    assert decrypt["effect"] == "Allow"
    assert decrypt["principals"] == [{"type": "AWS", "identifiers": [INSTANCE_ROLE_ARN]}]
    assert decrypt["actions"] == ["kms:Decrypt"]
    assert decrypt["condition"] == [
        {"test": "StringEqualsIgnoreCase", "variable": IMAGE_SHA384, "values": PCR0_VAR}
    ]
    (pcr8,) = _dynamic_conditions(decrypt)
    assert pcr8["for_each"] == PCR8_FOR_EACH
    assert pcr8["content"] == [
        {"test": "StringEqualsIgnoreCase", "variable": PCR8, "values": ["${condition.value}"]}
    ]

    # The only statement that allows Decrypt is that one.
    allowing = [
        sid
        for sid, s in by_sid.items()
        if s["effect"] == "Allow" and _actions_match(s.get("actions", []), "kms:Decrypt")
    ]
    assert allowing == ["DecryptOnlyInTheAttestedEnclave"]
    assert policy_problems(list(by_sid.values())) == []

    owner = by_sid["ModelOwnerWrapsOnly"]
    assert owner["effect"] == "Allow"
    assert owner["principals"] == [{"type": "AWS", "identifiers": [OWNER_ARN]}]
    assert sorted(owner["actions"]) == ["kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"]

    admin = by_sid["KeyAdministrationWithoutUse"]
    assert admin["principals"] == [{"type": "AWS", "identifiers": "${local.key_admin_arns}"}]
    for action in (
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:CreateGrant",
    ):
        assert not _actions_match(admin["actions"], action), action
    assert "kms:PutKeyPolicy" in admin["actions"]  # KMS's lockout check needs it

    no_plain = by_sid["NoDecryptWithoutAttestation"]
    assert no_plain["effect"] == "Deny"
    assert no_plain["principals"] == [{"type": "AWS", "identifiers": ["*"]}]
    assert no_plain["actions"] == ["kms:Decrypt"]
    assert no_plain["condition"] == [{"test": "Null", "variable": IMAGE_SHA384, "values": ["true"]}]

    side_doors = by_sid["NoGrantsNoReEncrypt"]
    assert side_doors["effect"] == "Deny"
    assert side_doors["principals"] == [{"type": "AWS", "identifiers": ["*"]}]
    assert sorted(side_doors["actions"]) == ["kms:CreateGrant", "kms:ReEncryptFrom"]
    assert "condition" not in side_doors


def test_no_policy_document_in_the_module_grants_decrypt_otherwise(
    module: dict[str, list[Any]],
) -> None:
    docs = _policy_docs(module)
    assert set(docs) == {"model_key", "instance", "instance_assume", "bundles", "access_logs"}
    for name, statements in docs.items():
        assert policy_problems(statements) == [], name
    # No negated operator anywhere in the code either (comments aside).
    for path in TF.rglob("*.tf"):
        code = [li.split("#", 1)[0] for li in path.read_text(encoding="utf-8").splitlines()]
        assert not any(re.search(r"\b[A-Za-z]+Not[A-Z][A-Za-z]*\b", li) for li in code), path


@pytest.mark.parametrize(
    "breakage",
    [
        "drop the condition",
        "StringNotEquals",
        "StringEquals on PCR1 instead",
        "owner may decrypt",
        "kms:* for the role",
        "NotAction",
        "grant",
        "drop the PCR8 condition",
    ],
)
def test_the_policy_rules_catch_a_broken_key_policy(
    module: dict[str, list[Any]], breakage: str
) -> None:
    statements = copy.deepcopy(_policy_docs(module)["model_key"])
    decrypt = next(s for s in statements if s["sid"] == "DecryptOnlyInTheAttestedEnclave")
    owner = next(s for s in statements if s["sid"] == "ModelOwnerWrapsOnly")
    if breakage == "drop the condition":
        del decrypt["condition"]
    elif breakage == "StringNotEquals":
        decrypt["condition"][0]["test"] = "StringNotEqualsIgnoreCase"
    elif breakage == "StringEquals on PCR1 instead":
        decrypt["condition"][0]["variable"] = "kms:RecipientAttestation:PCR1"
    elif breakage == "owner may decrypt":
        owner["actions"] = [*owner["actions"], "kms:Decrypt"]
    elif breakage == "kms:* for the role":
        statements.append(
            {
                "sid": "Wide",
                "effect": "Allow",
                "actions": ["kms:*"],
                "principals": decrypt["principals"],
            }
        )
    elif breakage == "NotAction":
        statements.append({"sid": "Not", "effect": "Allow", "not_actions": ["kms:Encrypt"]})
    elif breakage == "grant":
        owner["actions"] = [*owner["actions"], "kms:Create*"]
    elif breakage == "drop the PCR8 condition":
        del decrypt["dynamic"]
    assert policy_problems(statements) != []


def test_instance_role_is_least_privilege(module: dict[str, list[Any]]) -> None:
    by_sid = _statements(module, "instance")
    assert set(by_sid) == {
        "ReadModelBundles",
        "ListModelBundles",
        "ReadReleaseArtifacts",
        "DecryptOnlyInTheAttestedEnclave",
    }
    for s in by_sid.values():
        assert s["effect"] == "Allow"
        assert all("*" not in a for a in s["actions"]), s["sid"]
        assert "principals" not in s
    assert by_sid["ReadModelBundles"]["actions"] == ["s3:GetObject"]
    assert by_sid["ReadModelBundles"]["resources"] == [
        "${aws_s3_bucket.bundles.arn}/${var.model_prefix}*"
    ]
    listing = by_sid["ListModelBundles"]
    assert listing["actions"] == ["s3:ListBucket"]
    assert listing["resources"] == ["${aws_s3_bucket.bundles.arn}"]
    assert listing["condition"] == [
        {
            "test": "StringLike",
            "variable": "s3:prefix",
            "values": ["${var.model_prefix}", "${var.model_prefix}*"],
        }
    ]
    artifacts = by_sid["ReadReleaseArtifacts"]
    assert artifacts["actions"] == ["s3:GetObject"]
    assert artifacts["resources"] == [
        "arn:${local.partition}:s3:::${local.eif_bucket}/${local.eif_key}",
        "arn:${local.partition}:s3:::${local.release_bucket}/${local.release_key}",
    ]
    decrypt = by_sid["DecryptOnlyInTheAttestedEnclave"]
    assert decrypt["actions"] == ["kms:Decrypt"]
    assert decrypt["resources"] == ["${aws_kms_key.model.arn}"]
    assert _is_attested(decrypt)

    policy = _labelled(module, "resource", "aws_iam_role_policy")["instance"]
    assert policy["policy"] == "${data.aws_iam_policy_document.instance.json}"
    assert policy["role"] == "${aws_iam_role.instance.id}"
    (assume,) = _policy_docs(module)["instance_assume"]
    assert assume["actions"] == ["sts:AssumeRole"]
    assert assume["principals"] == [{"type": "Service", "identifiers": ["ec2.amazonaws.com"]}]
    # Only these attachments: SSM core, and only when asked for (off by default).
    attachments = _labelled(module, "resource", "aws_iam_role_policy_attachment")
    assert set(attachments) == {"ssm"}
    assert attachments["ssm"]["count"] == "${var.enable_ssm_session_manager ? 1 : 0}"
    assert attachments["ssm"]["policy_arn"].endswith(
        ":iam::aws:policy/AmazonSSMManagedInstanceCore"
    )
    assert _named(module, "variable")["enable_ssm_session_manager"]["default"] is False


# --- instances, bucket, network -----------------------------------------------------------


def test_launch_template_enclaves_imdsv2_encrypted_root(module: dict[str, list[Any]]) -> None:
    lt = _labelled(module, "resource", "aws_launch_template")["host"]
    assert _one(lt, "enclave_options") == {"enabled": True}
    metadata = _one(lt, "metadata_options")
    assert metadata["http_endpoint"] == "enabled"
    assert metadata["http_tokens"] == "required"
    assert metadata["http_put_response_hop_limit"] == 2
    ebs = _one(_one(lt, "block_device_mappings"), "ebs")
    assert ebs["encrypted"] is True
    assert ebs["delete_on_termination"] is True
    nic = _one(lt, "network_interfaces")
    assert nic["associate_public_ip_address"] is False
    assert nic["security_groups"] == ["${aws_security_group.instance.id}"]
    assert _one(lt, "iam_instance_profile") == {"arn": "${aws_iam_instance_profile.instance.arn}"}
    assert "key_name" not in lt  # no SSH key pair


def test_bucket_private_versioned_tls_only(module: dict[str, list[Any]]) -> None:
    for bucket in ("bundles", "access_logs"):
        ref = f"${{aws_s3_bucket.{bucket}.id}}"
        pab = _labelled(module, "resource", "aws_s3_bucket_public_access_block")[bucket]
        assert pab == {
            "bucket": ref,
            "block_public_acls": True,
            "block_public_policy": True,
            "ignore_public_acls": True,
            "restrict_public_buckets": True,
        }
        versioning = _labelled(module, "resource", "aws_s3_bucket_versioning")[bucket]
        assert _one(versioning, "versioning_configuration") == {"status": "Enabled"}
        sse = _labelled(module, "resource", "aws_s3_bucket_server_side_encryption_configuration")[
            bucket
        ]
        default = _one(_one(sse, "rule"), "apply_server_side_encryption_by_default")
        assert default == {"sse_algorithm": "AES256"}
        ownership = _labelled(module, "resource", "aws_s3_bucket_ownership_controls")[bucket]
        assert _one(ownership, "rule") == {"object_ownership": "BucketOwnerEnforced"}
        policy = _labelled(module, "resource", "aws_s3_bucket_policy")[bucket]
        assert policy["policy"] == f"${{data.aws_iam_policy_document.{bucket}.json}}"
        tls = _statements(module, bucket)["DenyInsecureTransport"]
        assert tls["effect"] == "Deny"
        assert tls["actions"] == ["s3:*"]
        assert tls["principals"] == [{"type": "*", "identifiers": ["*"]}]
        arn = f"${{aws_s3_bucket.{bucket}.arn}}"
        assert tls["resources"] == [arn, f"{arn}/*"]
        assert tls["condition"] == [
            {"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}
        ]
    logging = _labelled(module, "resource", "aws_s3_bucket_logging")
    assert set(logging) == {"bundles"}
    assert logging["bundles"]["target_bucket"] == "${aws_s3_bucket.access_logs.id}"


def test_load_balancer_forwards_tcp_and_checks_readyz(module: dict[str, list[Any]]) -> None:
    lb = _labelled(module, "resource", "aws_lb")["this"]
    assert lb["load_balancer_type"] == "network"
    assert lb["security_groups"] == ["${aws_security_group.nlb.id}"]
    listener = _labelled(module, "resource", "aws_lb_listener")["relay"]
    assert listener["protocol"] == "TCP"
    assert listener["port"] == "${local.relay_port}"
    assert _one(listener, "default_action") == {
        "type": "forward",
        "target_group_arn": "${aws_lb_target_group.relay.arn}",
    }
    tg = _labelled(module, "resource", "aws_lb_target_group")["relay"]
    assert tg["protocol"] == "TCP"
    assert tg["port"] == "${local.relay_port}"
    assert tg["preserve_client_ip"] is True
    check = _one(tg, "health_check")
    assert check["protocol"] == "HTTP"
    assert check["path"] == "/readyz"
    assert check["port"] == "${tostring(local.health_port)}"
    assert check["matcher"] == "200"
    asg = _labelled(module, "resource", "aws_autoscaling_group")["host"]
    assert asg["health_check_type"] == "ELB"
    assert asg["target_group_arns"] == ["${aws_lb_target_group.relay.arn}"]
    assert _one(asg, "launch_template")["id"] == "${aws_launch_template.host.id}"
    locals_ = {k: v for block in module["locals"] for k, v in block.items()}
    assert locals_["relay_port"] == "${var.base_port}"


def test_security_groups_admit_only_the_relay_and_health_ports(
    module: dict[str, list[Any]],
) -> None:
    groups = _labelled(module, "resource", "aws_security_group")
    assert set(groups) == {"nlb", "instance"}
    for body in groups.values():  # no inline rules: every rule is one of those below
        assert "ingress" not in body and "egress" not in body
    ingress = _labelled(module, "resource", "aws_vpc_security_group_ingress_rule")
    summary = {
        name: (
            r["security_group_id"],
            r["ip_protocol"],
            r["from_port"],
            r["to_port"],
            r.get("cidr_ipv4") or r.get("referenced_security_group_id"),
        )
        for name, r in ingress.items()
    }
    assert summary == {
        "nlb_relay_from_clients": (
            "${aws_security_group.nlb.id}",
            "tcp",
            "${local.relay_port}",
            "${local.relay_port}",
            "${each.value}",
        ),
        "instance_relay_from_nlb": (
            "${aws_security_group.instance.id}",
            "tcp",
            "${local.relay_port}",
            "${local.relay_port}",
            "${aws_security_group.nlb.id}",
        ),
        "instance_health_from_nlb": (
            "${aws_security_group.instance.id}",
            "tcp",
            "${local.health_port}",
            "${local.health_port}",
            "${aws_security_group.nlb.id}",
        ),
    }
    assert ingress["nlb_relay_from_clients"]["for_each"] == "${toset(var.allowed_client_cidrs)}"
    egress = _labelled(module, "resource", "aws_vpc_security_group_egress_rule")
    assert egress["instance_https"]["from_port"] == 443
    assert egress["instance_https"]["to_port"] == 443
    assert {
        n: r["referenced_security_group_id"] for n, r in egress.items() if n != "instance_https"
    } == {
        "nlb_relay_to_instances": "${aws_security_group.instance.id}",
        "nlb_health_to_instances": "${aws_security_group.instance.id}",
    }


# --- inputs, outputs, the example -----------------------------------------------------------


def _hcl_regex(condition: str, index: int = 0) -> re.Pattern[str]:
    """The ``index``-th regex("...") literal in a validation condition, compiled as RE2
    would read it (these patterns use nothing where Python and RE2 differ)."""
    literals = re.findall(r'regex\("((?:[^"\\]|\\.)*)"', condition)
    return re.compile(literals[index].replace("\\\\", "\\"))


def test_variables_are_validated(
    module: dict[str, list[Any]], example: dict[str, list[Any]]
) -> None:
    variables = _named(module, "variable")
    pcr0 = _one(variables["enclave_pcr0"], "validation")["condition"]
    pcr8 = _one(variables["enclave_pcr8"], "validation")["condition"]
    for condition in (pcr0, pcr8):
        hex96 = _hcl_regex(condition, 0)
        zeros = _hcl_regex(condition, 1)
        assert hex96.fullmatch("ab" * 48) and hex96.fullmatch("AB" * 48)
        assert not hex96.fullmatch("ab" * 47) and not hex96.fullmatch("ab" * 48 + "a")
        assert not hex96.fullmatch("g" * 96)
        assert zeros.fullmatch("0" * 96)
    assert "length(var.enclave_pcr0) >= 1" in pcr0
    assert variables["enclave_pcr8"]["default"] is None
    for name in ("allowed_client_cidrs", "egress_cidrs"):
        condition = _one(variables[name], "validation")["condition"]
        assert "try(cidrsubnet(c, 0, 0) == c, false)" in condition
        cidr = _hcl_regex(condition)
        assert cidr.fullmatch("10.0.0.0/16") and not cidr.fullmatch("10.0.0.0")
        assert not cidr.fullmatch("fd00::/8")
    # Region names: the example's rule is the host's (ephemeral-host --region).
    region = _hcl_regex(_one(_named(example, "variable")["region"], "validation")["condition"])
    host_rule = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
    for name in (
        "eu-west-1",
        "us-gov-west-1",
        "ap-southeast-2",
        "EU-WEST-1",
        "eu-west",
        "eu-west-10",
        "x",
    ):
        assert bool(region.fullmatch(name)) == bool(host_rule.fullmatch(name)), name
    # Every module input has a description and a type.
    for name, body in variables.items():
        assert body.get("description") and body.get("type"), name


def test_ports_follow_the_runtime(module: dict[str, list[Any]]) -> None:
    """The module derives the ports as runtime/_ports.py does: relay BASE, enclave
    BASE+5 (vsock), health BASE+8 unless given."""
    variables = _named(module, "variable")
    assert variables["base_port"]["default"] == DEFAULT_BASE_PORT
    assert variables["health_port"]["default"] is None
    locals_ = {k: v for block in module["locals"] for k, v in block.items()}
    assert locals_["relay_port"] == "${var.base_port}"
    assert locals_["health_port"] == (
        "${var.health_port != null ? var.health_port : var.base_port + 8}"
    )
    ports = Ports(DEFAULT_BASE_PORT)
    assert ports.client == DEFAULT_BASE_PORT
    assert ports.enclave == DEFAULT_BASE_PORT + 5
    # The host's health endpoint (Ports.health, where the runtime has it): BASE+8.
    assert getattr(ports, "health", DEFAULT_BASE_PORT + 8) == DEFAULT_BASE_PORT + 8
    template = (MODULE / "user_data.sh.tftpl").read_text(encoding="utf-8")
    assert "EPHEMERAL_ENCLAVE=vsock:$ENCLAVE_CID:$((BASE_PORT + 5))" in template
    # The host's TCP ports are the relay and the health endpoint; they must differ.
    asg = _labelled(module, "resource", "aws_autoscaling_group")["host"]
    conditions = [p["condition"] for p in _one(asg, "lifecycle")["precondition"]]
    assert "${local.health_port != var.base_port}" in conditions


def test_outputs(module: dict[str, list[Any]], example: dict[str, list[Any]]) -> None:
    outputs = {n: b["value"] for n, b in _named(module, "output").items()}
    assert outputs["nlb_dns_name"] == "${aws_lb.this.dns_name}"
    assert outputs["bundle_bucket"] == "${aws_s3_bucket.bundles.id}"
    assert outputs["kms_key_arn"] == "${aws_kms_key.model.arn}"
    assert outputs["instance_role_arn"] == "${aws_iam_role.instance.arn}"
    example_outputs = {n: b["value"] for n, b in _named(example, "output").items()}
    for name in ("nlb_dns_name", "bundle_bucket", "kms_key_arn", "instance_role_arn"):
        assert example_outputs[name] == f"${{module.ephemeralml.{name}}}"


def _tfvars_keys(path: Path) -> set[str]:
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([a-z_][a-z0-9_]*)\s*=", line)
        if m:
            keys.add(m.group(1))
    return keys


def test_the_example_uses_the_module_fully(
    module: dict[str, list[Any]], example: dict[str, list[Any]]
) -> None:
    (call,) = _named(example, "module").items()
    name, body = call
    assert name == "ephemeralml"
    assert body["source"] == "../../modules/ephemeralml"
    module_vars = _named(module, "variable")
    passed = set(body) - {"source"}
    assert passed <= set(module_vars), passed - set(module_vars)
    required = {n for n, v in module_vars.items() if "default" not in v}
    assert required <= passed, required - passed
    example_vars = _named(example, "variable")
    keys = _tfvars_keys(EXAMPLE / "terraform.tfvars.example")
    assert keys <= set(example_vars), keys - set(example_vars)
    assert {n for n, v in example_vars.items() if "default" not in v} <= keys


# --- user data --------------------------------------------------------------------------------


def _template_args(module: dict[str, list[Any]]) -> set[str]:
    user_data = _labelled(module, "resource", "aws_launch_template")["host"]["user_data"]
    assert 'templatefile("${path.module}/user_data.sh.tftpl"' in user_data
    return set(re.findall(r"\b([a-z_0-9]+)\s*=", user_data))


def _rendered(tmp_path: Path) -> Path:
    values = {
        "region": "eu-west-1",
        "base_port": "5000",
        "health_port": "5008",
        "store_url": "s3://bundles/models/",
        "eif_s3_uri": "s3://artifacts/enclave.eif",
        "enclave_pcr0": "ab" * 48,
        "enclave_pcr8": "",
        "enclave_cpu_count": "2",
        "enclave_memory_mib": "4096",
        "enclave_cid": "16",
        "host_release_s3_uri": "s3://artifacts/host-release.tar.gz",
        "host_release_sha256": "0" * 64,
    }
    text = (MODULE / "user_data.sh.tftpl").read_text(encoding="utf-8")
    assert "%{" not in text, "template directives would need escaping"
    out = tmp_path / "user_data.sh"
    out.write_text(re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text), encoding="utf-8")
    return out


def test_user_data_template(module: dict[str, list[Any]], tmp_path: Path) -> None:
    text = (MODULE / "user_data.sh.tftpl").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == _template_args(module)
    for unit in (
        "nitro-enclaves-allocator.service",
        "ephemeralml-enclave.service",
        "ephemeralml-host.service",
    ):
        assert f"{unit}" in text, unit
    assert "systemctl enable --now nitro-enclaves-allocator.service" in text
    assert "systemctl enable --now ephemeralml-enclave.service ephemeralml-host.service" in text
    assert "nitro-cli describe-eif" in text  # the EIF's PCR0 is checked before it runs
    assert "sha256sum --check --strict" in text  # the host release is pinned
    assert "--no-index" in text  # nothing from a package index at boot
    assert '--require-hashes -r "$work/host.lock"' in text  # requirements/host.lock
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    script = _rendered(tmp_path)
    proc = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=SHELL_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    shellcheck = ROOT / ".venv" / "bin" / "shellcheck"
    if shellcheck.is_file():
        proc = subprocess.run(
            [str(shellcheck), "--shell=bash", str(script)],
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stdout


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_user_data_writes_what_the_units_read() -> None:
    """The bootstrap's /etc/ephemeralml/ephemeralml.env has the names the units in
    deploy/systemd/ read, and creates the user they run as."""
    systemd = ROOT / "deploy" / "systemd"
    example = systemd / "ephemeralml.env.example"
    if not example.is_file():
        pytest.skip("deploy/systemd/ is not in this checkout")
    text = (MODULE / "user_data.sh.tftpl").read_text(encoding="utf-8")
    heredoc = re.search(r'cat > "\$ETC/ephemeralml.env" <<EOF\n(.*?)\nEOF\n', text, re.DOTALL)
    assert heredoc, "the bootstrap writes $ETC/ephemeralml.env from a here-document"
    assert _env_names(heredoc.group(1)) == _env_names(example.read_text(encoding="utf-8"))
    for unit in ("ephemeralml-host.service", "ephemeralml-enclave.service"):
        body = (systemd / unit).read_text(encoding="utf-8")
        assert "EnvironmentFile=/etc/ephemeralml/ephemeralml.env" in body, unit
        assert re.search(r"^User=ephemeralml$", body, re.MULTILINE), unit
    assert "useradd --system --user-group" in text and "usermod -aG ne ephemeralml" in text


def _all_tf() -> Iterator[Path]:
    yield from sorted(TF.rglob("*.tf"))


def test_every_tf_file_parses() -> None:
    files = list(_all_tf())
    assert {p.relative_to(TF).as_posix() for p in files} >= {
        "modules/ephemeralml/kms.tf",
        "modules/ephemeralml/iam.tf",
        "modules/ephemeralml/s3.tf",
        "modules/ephemeralml/network.tf",
        "modules/ephemeralml/compute.tf",
        "examples/single-region/main.tf",
    }
    for path in files:
        assert _parse(path), path
