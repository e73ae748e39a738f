"""``ephemeral policy keygen|sign|show|from-measurements``: the policy owner's
subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import default_home, read_bounded, write_atomic

from ._cli_common import echo
from ._policy import (
    POLICY_SIGNERS_FILE,
    ClientPolicy,
    generate_signer_key,
    load_policy_signers,
    load_signer_key,
    parse_signer_keys,
    policy_signer_kid,
    sign_policy,
)

__all__ = [
    "cmd_policy_from_measurements",
    "cmd_policy_keygen",
    "cmd_policy_show",
    "cmd_policy_sign",
]

_MAX_FILE_BYTES = 1024 * 1024


def _signers(args: argparse.Namespace, home: Path) -> dict[bytes, bytes]:
    """Trusted policy signers: $EPHEMERALML_HOME/policy-signers plus every --policy-signer."""
    signers = load_policy_signers(home)
    signers.update(parse_signer_keys(args.policy_signer or ()))
    return signers


def _read(path: Path, what: str) -> bytes:
    return read_bounded(path, _MAX_FILE_BYTES, what)


def cmd_policy_keygen(args: argparse.Namespace) -> int:
    pub = generate_signer_key(args.out)
    echo(args, f"policy signing key written to {args.out} (keep it secret)")
    echo(args, f"  public key  {pub.hex()}")
    echo(args, f"  key id      {policy_signer_kid(pub).hex()}")
    echo(args, f"clients trust it with --policy-signer {pub.hex()}")
    echo(args, f"or that key as a line of $EPHEMERALML_HOME/{POLICY_SIGNERS_FILE}")
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    payload = _read(args.policy_json, "policy")
    key = load_signer_key(args.key)
    signed, doc = sign_policy(payload, key, where=str(args.policy_json))
    write_atomic(args.out, signed)
    kid = policy_signer_kid(key.public_key().public_bytes_raw())
    echo(args, f"signed policy version {doc.version} -> {args.out} (signer {kid.hex()})")
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    home = args.home or default_home()
    # Every check a client runs (P3, P4), without recording the version: showing a
    # policy is not adopting it.
    policy = ClientPolicy.from_file(
        args.file, home=home, trusted_signers=_signers(args, home), record=False
    )
    d = policy.to_json()
    if args.json:
        echo(args, json.dumps(d, indent=2))
        return 0
    if policy.signer:
        echo(args, f"policy {args.file} VERIFIED: signed by {policy.signer.hex()}")
    else:
        echo(args, f"policy {args.file} is valid: UNSIGNED (no policy signer configured)")
    r = d["root"]
    echo(args, f"  version       {d['version']}")
    echo(args, f"  root          {r['name']} sha256 {r['sha256']}{'  (MOCK)' if r['mock'] else ''}")
    echo(args, f"  max age       {d['max_age_s']} s")
    for i, s in enumerate(d["measurements"]):
        for pcr, value in s.items():
            echo(args, f"  set {i:<2} {pcr:<5} {value}")
    if d["allow_debug"]:
        echo(args, "  DEBUG MODE    allowed: a debug-mode enclave proves nothing about its code")
    models = d["models"]
    if models is None:
        echo(args, "  models        any attested model")
    for k, digests in (models or {}).items():
        for dg in digests:
            echo(args, f"  model         {k} manifest {dg}")
    for key in d["owner_keys"] or ():
        echo(args, f"  owner key     {key}")
    echo(args, f"  min enclave policy version {d['min_enclave_policy_version']}")
    return 0


def cmd_policy_from_measurements(args: argparse.Namespace) -> int:
    from ._policy_make import (
        MOCK_POLICY_WARNING,
        make_policy,
        parse_model_pins,
        read_measurements,
        summary_lines,
        write_policy,
    )

    home = args.home or default_home()
    out: Path | None = None if str(args.out) == "-" else args.out
    if out is not None and not args.force and (out.exists() or out.is_symlink()):
        raise ConfigError(f"{out} exists; give --force to replace it")
    sets = read_measurements(args.files, home)
    made = make_policy(
        sets,
        out=out,
        root_pem=args.root,
        models=parse_model_pins(args.model or ()),
        version=args.version,
    )
    if made.mode == "mock":
        print(
            MOCK_POLICY_WARNING.format(files=", ".join(p.where for p in sets)),
            file=sys.stderr,
            flush=True,
        )
    if out is None:
        echo(args, made.data.decode().rstrip("\n"))
        return 0
    write_policy(out, made.data, force=args.force)
    for line in summary_lines(made, str(out)):
        echo(args, line)
    echo(
        args,
        f"check it: ephemeral policy show {out}; "
        f"sign it: ephemeral policy sign {out} --key KEY.pem --out policy.cose",
    )
    return 0
