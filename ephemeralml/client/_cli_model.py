"""``ephemeral model keygen|package|upload|show``: the model owner's subcommands.

Their libraries (boto3, packaging, upload, manifest display) are imported when a
subcommand runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import default_home
from ephemeralml.runtime._ports import Ports

from ._cli_common import PROG, echo

__all__ = ["cmd_model_keygen", "cmd_model_package", "cmd_model_show", "cmd_model_upload"]


def _region(flag: str | None) -> str:
    """``--region``, else ``$AWS_REGION``, else us-east-1."""
    return flag or os.environ.get("AWS_REGION") or "us-east-1"


def _aws_client(service: str, endpoint: str | None, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=_region(region), endpoint_url=endpoint)


def cmd_model_keygen(args: argparse.Namespace) -> int:
    from ephemeralml.common._bundle import owner_key_id

    from ._package import generate_owner_key

    pub = generate_owner_key(args.out)
    echo(args, f"owner key written to {args.out} (keep it secret)")
    echo(args, f"  public key  {pub.hex()}")
    echo(args, f"  key id      {owner_key_id(pub).hex()}")
    return 0


def cmd_model_package(args: argparse.Namespace) -> int:
    from ephemeralml.common._errors import KeyReleaseError, TransportError

    from ._package import MockKms, default_sources, dir_sources, load_owner_key, package_model

    mock: MockKms | None = None
    if args.mock:
        # The local KMS of the mock deployment, as its model owner: no AWS credentials.
        home = args.home or default_home()
        mock = MockKms.find(home, Ports.choose(args.base_port, os.environ), url=args.kms_endpoint)
        kms_key_id = args.kms_key_id or mock.kms_key_id()
        owner_path = args.owner_key or mock.owner_key_path()
    elif args.owner_key is None or args.kms_key_id is None:
        raise ConfigError(
            "model package needs --owner-key and --kms-key-id "
            "(or --mock, for the local mock deployment's)"
        )
    elif args.base_port is not None:
        raise ConfigError("--base-port needs --mock (it finds the mock deployment's local KMS)")
    else:
        kms_key_id, owner_path = args.kms_key_id, args.owner_key
    owner_key = load_owner_key(owner_path)
    if mock is not None and not mock.trusts_owner(owner_key.public_key().public_bytes_raw()):
        print(
            f"{PROG}: warning: {owner_path} is not an owner key the mock enclave trusts "
            "($EPHEMERALML_HOME/published/model-owners.txt): it will refuse this bundle (M2)",
            file=sys.stderr,
            flush=True,
        )
    if args.model_dir:
        if not args.model_id:
            raise ConfigError("--model-dir needs --model-id")
        model_id, sources = args.model_id, dir_sources(args.model_dir)
    else:
        model_id, sources = default_sources()
        model_id = args.model_id or model_id
    if mock is not None:
        kms = mock.client(_region(args.region))
    else:
        kms = _aws_client("kms", args.kms_endpoint, args.region)
    try:
        m = package_model(
            sources,
            model_id=model_id,
            version=args.version,
            kms=kms,
            kms_key_id=kms_key_id,
            owner_key=owner_key,
            out_dir=args.out,
            chunk_size=args.chunk_size,
            release=args.release,
        )
    except (KeyReleaseError, TransportError) as e:
        if mock is None:
            raise
        raise mock.explain(e, kms_key_id) from e
    if args.json:
        echo(
            args,
            json.dumps(
                {
                    "model_id": m.model_id,
                    "version": m.version,
                    "release": m.release,
                    "manifest_digest": m.digest.hex(),
                    "kms_key_id": m.kms_key_id,
                    "plaintext_size": m.plaintext_size,
                    "ciphertext_size": m.ciphertext_size,
                    "out": str(args.out),
                    "mock": mock is not None,
                }
            ),
        )
        return 0
    echo(
        args,
        f"packaged {m.model_id} {m.version} release {m.release}: "
        f"{m.plaintext_size} bytes in {m.chunk_count} chunk(s) -> {args.out}",
    )
    echo(args, f"  manifest digest  {m.digest.hex()}")
    echo(
        args,
        f"  KMS key          {m.kms_key_id}"
        f"{f' (MOCK: the local KMS at {mock.url})' if mock else ''}",
    )
    return 0


def cmd_model_upload(args: argparse.Namespace) -> int:
    from ephemeralml.runtime._home import MOCK_STORE

    from ._upload import upload_local, upload_s3

    if sum(bool(x) for x in (args.to, args.s3, args.mock)) != 1:
        raise ConfigError(
            "give exactly one of --to DIR, --s3 s3://bucket/prefix "
            "or --mock (the mock host's store)"
        )
    if args.to or args.mock:
        store = args.to or (args.home or default_home()) / MOCK_STORE
        dest = upload_local(args.bundle, store, args.model_id)
        model_id, where, keys = dest.name, str(dest), None
    else:
        keys = upload_s3(
            args.bundle, args.s3, args.model_id, s3=_aws_client("s3", args.s3_endpoint, args.region)
        )
        where = keys[-1].rsplit("/", 1)[0] + "/"
        model_id = where.rstrip("/").rsplit("/", 1)[1]
    if args.json:
        echo(
            args,
            json.dumps({"model_id": model_id, "to": where, **({"keys": keys} if keys else {})}),
        )
    else:
        echo(args, f"uploaded {model_id} to {where}")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from ._model_show import (
        owner_keys_for_show,
        parse_digest_prefix,
        show_bundles,
        show_json,
        show_lines,
    )

    home = args.home or default_home()
    digest = parse_digest_prefix(args.digest) if args.digest is not None else None
    keys, where = owner_keys_for_show(args.owner_key or (), home)
    shown = show_bundles(args.bundles, keys, where, model_id=args.model_id, digest=digest)
    if args.json:
        for s in shown:  # one JSON object a line, one line a manifest
            echo(args, json.dumps(show_json(s)))
        return 0
    for i, s in enumerate(shown):
        if i:
            echo(args)
        for line in show_lines(s):
            echo(args, line)
    return 0
