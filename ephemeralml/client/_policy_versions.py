"""P4 (protocol.md §8): the rollback state, the highest policy version accepted per
identity (:class:`PolicyVersionStore`, ``policy-versions.json`` in the home)."""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from ephemeralml.common._errors import ConfigError, PolicyError
from ephemeralml.runtime._home import write_atomic

__all__ = ["POLICY_VERSIONS_FILE", "PolicyVersionStore"]

#: Relative to the home: the highest policy version accepted per identity (P4).
POLICY_VERSIONS_FILE = Path("policy-versions.json")

_VERSIONS_FORMAT = "ephemeralml-policy-versions/1"


class PolicyVersionStore:
    """The highest policy version accepted, per identity (check P4, protocol.md §8).

    A JSON file (``{"format": ..., "accepted": {identity: version}}``) written with
    :func:`write_atomic` under an exclusive ``flock`` on ``<path>.lock``, so two
    clients never lose each other's update. A store that cannot be read is an error,
    never treated as empty: that would reset rollback protection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_home(cls, home: Path) -> PolicyVersionStore:
        return cls(home / POLICY_VERSIONS_FILE)

    def accepted(self) -> dict[str, int]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"cannot read policy version store {self.path}: {e.strerror}") from e
        try:
            data = json.loads(raw)
            if data.get("format") != _VERSIONS_FORMAT or not isinstance(data["accepted"], dict):
                raise ValueError("not a policy version store")
            out = dict(data["accepted"])
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out.values()
            ):
                raise ValueError("versions must be non-negative integers")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"policy version store {self.path} is unreadable ({e}); refusing to "
                "reset rollback protection: repair or remove it by hand"
            ) from e
        return out

    def check(self, identity: str, version: int) -> None:
        """P4 without recording: raise if ``version`` is below the one accepted."""
        seen = self.accepted().get(identity)
        if seen is not None and version < seen:
            raise PolicyError(
                f"P4 policy version: version {version} is older than version {seen} "
                f"already accepted from {identity}"
            )

    def check_and_record(self, identity: str, version: int) -> None:
        """P4, then remember ``version`` for ``identity`` if it is higher."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                accepted = self.accepted()
                self.check(identity, version)
                if accepted.get(identity, -1) < version:
                    accepted[identity] = version
                    data = {"format": _VERSIONS_FORMAT, "accepted": dict(sorted(accepted.items()))}
                    write_atomic(self.path, (json.dumps(data, indent=1) + "\n").encode())
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(f, fcntl.LOCK_UN)
