"""Offline checks of the shell scripts and the systemd units (no Docker, no nitro-cli).

* shellcheck finds nothing in ``scripts/*.sh``, ``requirements/*.sh`` and the
  ``/bin/sh -c`` scripts of ``deploy/systemd/*.service``; a waiver says why on its line.
* ``scripts/build_eif.sh`` against stand-ins for docker and nitro-cli (the real
  ``ephemeral`` CLI): the exact build and EIF commands (SOURCE_DATE_EPOCH, owner keys
  and floors as build args, the config as a build context of its own, timestamps
  rewritten, signing only with both files), measurements.json and the policy made
  and signed from it, the Rust lock made when missing, and a one-line error, before
  any work, when a tool or an input is missing.
* ``deploy/systemd``: the security-relevant settings line by line; the enclave unit's
  commands run as systemd would run them: no ``--debug-mode`` unless
  ``EPHEMERALML_ENCLAVE_DEBUG=1``, which logs why that enclave is refused, and anything
  else refused; the host unit's command line accepted by the host program; the
  environment template consistent (the enclave's port is BASE+5, the allocator gives
  what the enclave asks for) and the names the terraform bootstrap writes; and, where
  systemd-analyze exists, the units parse and the host's exposure score stays low.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ephemeralml.runtime._ports import Ports

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
EPHEMERAL = ROOT / ".venv" / "bin" / "ephemeral"
BUILD_EIF = ROOT / "scripts" / "build_eif.sh"
SYSTEMD = ROOT / "deploy" / "systemd"
ENCLAVE_UNIT = SYSTEMD / "ephemeralml-enclave.service"
HOST_UNIT = SYSTEMD / "ephemeralml-host.service"
ENV_EXAMPLE = SYSTEMD / "ephemeralml.env.example"
ALLOCATOR = SYSTEMD / "allocator.yaml"
BOOTSTRAP = ROOT / "infra" / "terraform" / "modules" / "ephemeralml" / "user_data.sh.tftpl"
TIMEOUT_S = 120

PCR = {i: f"{i + 1:02x}" * 48 for i in (0, 1, 2, 8)}
OWNER_KEY = "3707a304c55c6015bd231767e1a38a116dd278b1c28526308da8cf6fded53ae2"


def shell_scripts() -> list[Path]:
    found = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "requirements").glob("*.sh"))
    assert BUILD_EIF in found
    return found


# ---------------------------------------------------------------------------------
# shellcheck
# ---------------------------------------------------------------------------------


def shellcheck(path: Path, *extra: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [str(SHELLCHECK), "--format=json", "--external-sources", *extra, str(path)],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=path.parent,
    )  # fmt: skip
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    assert findings or done.returncode == 0, done.stderr
    return findings


def _describe(findings: list[dict[str, object]]) -> str:
    return "\n".join(f"{f['line']}: SC{f['code']} {f['level']}: {f['message']}" for f in findings)


needs_shellcheck = pytest.mark.skipif(
    not SHELLCHECK.exists(), reason="shellcheck not installed (.venv: pip install -e '.[infra]')"
)


@needs_shellcheck
@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck_finds_nothing(script: Path) -> None:
    findings = shellcheck(script)
    assert findings == [], _describe(findings)
    # A waiver is a decision: it says why, after the directive.
    for n, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
        if m := re.match(r"\s*#\s*shellcheck\s+disable=\S+(.*)$", line):
            reason = m.group(1).strip().lstrip("#").strip()
            assert len(reason) > 10, f"{script.name}:{n}: a shellcheck waiver without a reason"


@needs_shellcheck
def test_shellcheck_sees_what_it_should(tmp_path: Path) -> None:
    """The check is live: the finding this issue fixed in _venv.sh is still found."""
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nROOT=/x\npip install -e "$ROOT[test]"\n')
    assert [f["code"] for f in shellcheck(bad)] == [1087]


# ---------------------------------------------------------------------------------
# scripts/build_eif.sh, against stand-ins for docker and nitro-cli
# ---------------------------------------------------------------------------------

FAKE_DOCKER = """\
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["docker", *args]) + "\\n")
if args[:2] == ["buildx", "version"]:
    print("github.com/docker/buildx v0.19.0")
    sys.exit(0)
if os.environ.get("FAKE_DOCKER_FAIL"):
    print("ERROR: failed to solve", file=sys.stderr)
    sys.exit(1)
if "nsm-lock" in args:
    dest = args[args.index("--output") + 1].split("dest=", 1)[1]
    Path(dest, "Cargo.lock").write_text("# a Cargo.lock\\n")
"""

FAKE_NITRO_CLI = """\
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["nitro-cli", *args]) + "\\n")
if args[:1] == ["build-enclave"]:
    out = args[args.index("--output-file") + 1]
    with open(out, "wb") as f:
        f.truncate(int(os.environ.get("FAKE_EIF_BYTES", "1000")))
    pcrs = json.loads(os.environ["FAKE_PCRS"])
    if "--signing-certificate" not in args:
        pcrs.pop("PCR8")
    print("Start building the Enclave Image...", file=sys.stderr)
    print("Using the locally available Docker image...", file=sys.stderr)
    print("Enclave Image successfully created.")
    print(json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", **pcrs}}, indent=2))
"""


class Tools:
    """A copy of the repository's build_eif.sh in a folder of its own, and stand-ins."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.repo = tmp / "repo"
        (self.repo / "scripts").mkdir(parents=True)
        (self.repo / "docker" / "nsm-lib").mkdir(parents=True)
        shutil.copy2(BUILD_EIF, self.repo / "scripts" / "build_eif.sh")
        (self.repo / "docker" / "nsm-lib" / "Cargo.lock").write_text("# locked\n")
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "calls.jsonl"
        self.owners = tmp / "owners.txt"
        self.owners.write_text(f"# the model owner\n{OWNER_KEY}\n")

    def tool(self, name: str, source: str) -> None:
        path = self.bin / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        run_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "EPHEMERALML_HOME": str(self.tmp / "home"),
            "EPHEMERAL": str(EPHEMERAL),
            "FAKE_LOG": str(self.log),
            "FAKE_PCRS": json.dumps({f"PCR{i}": v for i, v in PCR.items()}),
            "SOURCE_DATE_EPOCH": "1700000000",
            "LANG": "C.UTF-8",
        }
        run_env.update(env or {})
        return subprocess.run(
            ["bash", str(self.repo / "scripts" / "build_eif.sh"), *args],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=run_env, cwd=self.tmp,
        )  # fmt: skip

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    if not EPHEMERAL.exists():
        pytest.skip("the ephemeral CLI is not installed in .venv")
    t = Tools(tmp_path)
    t.tool("docker", FAKE_DOCKER)
    t.tool("nitro-cli", FAKE_NITRO_CLI)
    return t


def _flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_build_eif_commands_and_outputs(tools: Tools) -> None:
    floors = tools.tmp / "floors.txt"
    floors.write_text("all-MiniLM-L6-v2 2\n")
    ca = tools.tmp / "kms-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    out = tools.tmp / "out"
    done = tools.run(
        "--owner-keys", str(tools.owners), "--floors", str(floors), "--ca-bundle", str(ca),
        "--out", str(out), "--model", "all-MiniLM-L6-v2=" + "ab" * 32, "--policy-version", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = tools.calls()
    builds = [c for c in calls if c[:3] == ["docker", "buildx", "build"]]
    assert len(builds) == 1, calls
    build = builds[0]
    assert _flag_values(build, "--file") == [str(tools.repo / "docker" / "Dockerfile.enclave")]
    assert _flag_values(build, "--target") == ["enclave"]
    assert _flag_values(build, "--platform") == ["linux/amd64"]
    assert build[-1] == str(tools.repo)
    build_args = dict(a.split("=", 1) for a in _flag_values(build, "--build-arg"))
    assert build_args["SOURCE_DATE_EPOCH"] == "1700000000"
    assert build_args["OWNER_KEYS"] == tools.owners.read_text().rstrip("\n")
    assert build_args["MODEL_FLOORS"] == "all-MiniLM-L6-v2 2"
    assert build_args["BASE_PORT"] == "5000"
    (context,) = _flag_values(build, "--build-context")
    assert context.startswith("enclave-config=")
    (output,) = _flag_values(build, "--output")
    assert output == "type=docker,name=ephemeralml-enclave:unknown,rewrite-timestamp=true"
    assert "--provenance=false" in build
    assert "--no-cache" not in build
    eif_calls = [c for c in calls if c[:2] == ["nitro-cli", "build-enclave"]]
    assert eif_calls == [[
        "nitro-cli", "build-enclave", "--docker-uri", "ephemeralml-enclave:unknown",
        "--output-file", str(out / "enclave.eif"),
    ]]  # fmt: skip
    # The JSON object only, parsed as the policy command parses it.
    measurements = json.loads((out / "measurements.json").read_text())
    assert measurements["Measurements"]["PCR0"] == PCR[0]
    policy = json.loads((out / "policy.json").read_text())
    assert policy["root"] == "aws-nitro"
    assert policy["version"] == 3
    assert policy["measurements"] == [{"PCR0": PCR[0], "PCR1": PCR[1], "PCR2": PCR[2]}]
    assert policy["models"] == {"all-MiniLM-L6-v2": "ab" * 32}
    assert not (out / "policy.cose").exists()
    assert "memory_mib >= 1" in done.stdout
    info = (out / "build-info.txt").read_text()
    assert "source_date_epoch  1700000000" in info and "base_port          5000" in info


def test_build_eif_signs_the_eif_and_the_policy(tools: Tools) -> None:
    cert, key = tools.tmp / "cert.pem", tools.tmp / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    signer = tools.tmp / "signer.pem"
    made = subprocess.run(
        [str(EPHEMERAL), "policy", "keygen", "--out", str(signer)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
        env={**os.environ, "EPHEMERALML_HOME": str(tools.tmp / "home")},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    out = tools.tmp / "signed"
    done = tools.run(
        "--owner-keys", str(tools.owners), "--out", str(out), "--tag", "enc:1",
        "--signing-certificate", str(cert), "--private-key", str(key), "--sign-policy", str(signer),
        "--no-cache", "--base-port", "6000",
        env={"FAKE_EIF_BYTES": str(300 * 1024 * 1024)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (eif_call,) = [c for c in tools.calls() if c[:2] == ["nitro-cli", "build-enclave"]]
    assert _flag_values(eif_call, "--signing-certificate") == [str(cert)]
    assert _flag_values(eif_call, "--private-key") == [str(key)]
    assert _flag_values(eif_call, "--docker-uri") == ["enc:1"]
    policy = json.loads((out / "policy.json").read_text())
    assert policy["measurements"] == [{f"PCR{i}": PCR[i] for i in (0, 1, 2, 8)}]
    assert (out / "policy.cose").stat().st_size > 0
    # 4x a 300 MiB EIF.
    assert "memory_mib >= 1200 " in done.stdout
    build = next(c for c in tools.calls() if c[:3] == ["docker", "buildx", "build"])
    build_args = dict(a.split("=", 1) for a in _flag_values(build, "--build-arg"))
    assert build_args["MODEL_FLOORS"] == ""
    assert build_args["BASE_PORT"] == "6000"
    assert "--no-cache" in build


def test_build_eif_makes_the_rust_lock_when_missing(tools: Tools) -> None:
    (tools.repo / "docker" / "nsm-lib" / "Cargo.lock").unlink()
    done = tools.run("--owner-keys", str(tools.owners), "--out", str(tools.tmp / "o"))
    assert done.returncode == 0, done.stderr
    assert "Cargo.lock is missing" in done.stderr
    builds = [c for c in tools.calls() if c[:3] == ["docker", "buildx", "build"]]
    assert _flag_values(builds[0], "--target") == ["nsm-lock"]
    assert _flag_values(builds[1], "--target") == ["enclave"]
    assert (tools.repo / "docker" / "nsm-lib" / "Cargo.lock").exists()


@pytest.mark.parametrize(
    ("drop", "args", "env", "message"),
    [
        ("docker", ["--owner-keys", "OWNERS"], {}, "docker not found"),
        ("nitro-cli", ["--owner-keys", "OWNERS"], {}, "nitro-cli not found"),
        (None, [], {}, "--owner-keys FILE is required"),
        (None, ["--owner-keys", "/nonexistent"], {}, "/nonexistent is not a readable file"),
        (None, ["--owner-keys", "OWNERS", "--private-key", "OWNERS"], {}, "go together"),
        (None, ["--owner-keys", "OWNERS", "--base-port", "70000"], {}, "--base-port must be"),
        (None, ["--owner-keys", "OWNERS", "--bogus"], {}, "unknown argument --bogus"),
        (None, ["--owner-keys", "OWNERS"], {"SOURCE_DATE_EPOCH": ""}, "not a git checkout"),
        (
            None,
            ["--owner-keys", "OWNERS"],
            {"EPHEMERAL": "/nonexistent/ephemeral"},
            "ephemeral CLI was not found",
        ),
    ],
)
def test_build_eif_refuses_before_any_work(
    tools: Tools, drop: str | None, args: list[str], env: dict[str, str], message: str
) -> None:
    if drop:
        (tools.bin / drop).unlink()
    args = [str(tools.owners) if a == "OWNERS" else a for a in args]
    done = tools.run(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not [c for c in tools.calls() if c[1:3] == ["buildx", "build"] or c[0] == "nitro-cli"]


def test_build_eif_stops_when_docker_fails(tools: Tools) -> None:
    done = tools.run("--owner-keys", str(tools.owners), env={"FAKE_DOCKER_FAIL": "1"})
    assert done.returncode != 0
    assert not [c for c in tools.calls() if c[0] == "nitro-cli"]


def test_build_eif_help() -> None:
    done = subprocess.run(
        ["bash", str(BUILD_EIF), "--help"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0
    assert "--owner-keys" in done.stdout and "SOURCE_DATE_EPOCH" in done.stdout


# ---------------------------------------------------------------------------------
# deploy/systemd
# ---------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order (keys repeat in units), continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def one(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            out[key] = value
    return out


def unit_env(sections: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Environment= defaults, then the EnvironmentFile (the template), as systemd does."""
    env: dict[str, str] = {}
    for value in values(sections, "Service", "Environment"):
        for item in shlex.split(value):
            key, _, v = item.partition("=")
            env[key] = v
    assert values(sections, "Service", "EnvironmentFile") == ["/etc/ephemeralml/ephemeralml.env"]
    env.update(env_file(ENV_EXAMPLE))
    return env


def expand(value: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of a command line: ${VAR} substituted, $$ a literal $."""
    value = value.lstrip("-@+!:")
    words = shlex.split(value)
    out = []
    for word in words:
        word = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: env[m.group(1)], word)
        out.append(word.replace("$$", "$"))
    return out


def shell_scripts_of(path: Path) -> list[str]:
    """The /bin/sh -c scripts of a unit, as sh receives them."""
    scripts = []
    for section in unit(path).values():
        for key, value in section:
            if key.startswith("Exec") and shlex.split(value.lstrip("-@+!:"))[:2] == [
                "/bin/sh",
                "-c",
            ]:
                raw = shlex.split(value.lstrip("-@+!:"))[2]
                # systemd would splice ${VAR} into the script's text: every $ must be $$.
                assert not re.search(r"(?<!\$)\$(?!\$)", raw.replace("$$", "")), (
                    f"{path.name} {key}: a $ that systemd would expand inside shell code"
                )
                scripts.append(raw.replace("$$", "$"))
    return scripts


@needs_shellcheck
@pytest.mark.parametrize("path", [ENCLAVE_UNIT, HOST_UNIT], ids=lambda p: p.name)
def test_shellcheck_unit_scripts(path: Path, tmp_path: Path) -> None:
    for n, script in enumerate(shell_scripts_of(path)):
        f = tmp_path / f"{path.stem}-{n}.sh"
        f.write_text("#!/bin/sh\n" + script + "\n")
        findings = shellcheck(f, "--shell=sh")
        assert findings == [], f"{path.name}:\n{script}\n{_describe(findings)}"


def test_enclave_unit_settings() -> None:
    u = unit(ENCLAVE_UNIT)
    assert "nitro-enclaves-allocator.service" in values(u, "Unit", "Requires")
    assert "nitro-enclaves-allocator.service" in values(u, "Unit", "After")
    assert one(u, "Service", "Type") == "forking"
    assert one(u, "Service", "Restart") == "always"
    assert int(one(u, "Service", "RestartSec")) >= 1
    assert one(u, "Service", "User") == "ephemeralml"
    assert one(u, "Service", "SupplementaryGroups") == "ne"
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
    ]:
        assert one(u, "Service", key) == value, key
    assert one(u, "Service", "ReadWritePaths").split() == [
        "/run/nitro_enclaves",
        "/var/log/nitro_enclaves",
    ]
    env = unit_env(u)
    # Production is not debug: the default is 0 and the template does not turn it on.
    assert env["EPHEMERALML_ENCLAVE_DEBUG"] == "0"
    assert "EPHEMERALML_ENCLAVE_DEBUG" not in env_file(ENV_EXAMPLE)
    stop = expand(one(u, "Service", "ExecStop"), env)
    assert stop == ["/usr/bin/nitro-cli", "terminate-enclave", "--enclave-name", "ephemeralml"]
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def _run_unit_command(
    value: str, env: dict[str, str], nitro_cli: Path
) -> subprocess.CompletedProcess[str]:
    argv = expand(value, env)
    argv = [a.replace("/usr/bin/nitro-cli", str(nitro_cli)) for a in argv]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


@pytest.mark.parametrize("debug", [None, "0", "1", "yes", "true", ""])
def test_enclave_unit_debug_mode_only_when_asked(tmp_path: Path, debug: str | None) -> None:
    """ExecStartPre and ExecStart, run as systemd runs them, with a stand-in nitro-cli."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "nitro-cli"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    u = unit(ENCLAVE_UNIT)
    env = unit_env(u)
    if debug is not None:
        env["EPHEMERALML_ENCLAVE_DEBUG"] = debug
    pre = [_run_unit_command(v, env, fake) for v in values(u, "Service", "ExecStartPre")]
    if debug not in (None, "0", "1"):
        assert pre[0].returncode != 0, "an unknown EPHEMERALML_ENCLAVE_DEBUG must stop the start"
        assert "must be 0 or 1" in pre[0].stderr
        return
    assert all(p.returncode == 0 for p in pre), [p.stderr for p in pre]
    started = _run_unit_command(one(u, "Service", "ExecStart"), env, fake)
    assert started.returncode == 0, started.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == ["terminate-enclave", "--enclave-name", "ephemeralml"]
    expected = [
        "run-enclave", "--enclave-name", "ephemeralml",
        "--eif-path", env["EPHEMERALML_EIF"],
        "--enclave-cid", env["EPHEMERALML_ENCLAVE_CID"],
        "--cpu-count", env["EPHEMERALML_ENCLAVE_CPU_COUNT"],
        "--memory", env["EPHEMERALML_ENCLAVE_MEMORY_MIB"],
    ]  # fmt: skip
    warning = "".join(p.stderr for p in pre)
    if debug == "1":
        assert calls[1] == [*expected, "--debug-mode"]
        assert "WARNING" in warning and "all zeros" in warning and "refuse" in warning
    else:
        assert calls[1] == expected
        assert warning == ""


def test_host_unit_settings_and_command() -> None:
    from ephemeralml.host._cli import _parser, build_config

    u = unit(HOST_UNIT)
    assert one(u, "Service", "Restart") == "always"
    assert one(u, "Service", "User") == "ephemeralml"
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictNamespaces", "yes"),
        ("StateDirectory", "ephemeralml"),
    ]:
        assert one(u, "Service", key) == value, key
    families = one(u, "Service", "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_VSOCK"} <= set(families)
    env = unit_env(u)
    argv = expand(one(u, "Service", "ExecStart"), env)
    assert argv[0] == "/opt/ephemeralml/venv/bin/ephemeral-host"
    assert "--mock" not in argv
    # The host program itself takes this command line and this environment.
    config = build_config(_parser().parse_args(argv[1:]), env)
    assert config.profile.name == "nitro"
    assert config.store == env["EPHEMERALML_STORE"]
    assert config.region == env["AWS_REGION"]
    assert [str(u) for u in config.relay.upstreams] == [env["EPHEMERAL_ENCLAVE"]]


def test_environment_template_is_consistent() -> None:
    env = env_file(ENV_EXAMPLE)
    ports = Ports.choose(None, env)
    assert env["EPHEMERAL_ENCLAVE"] == f"vsock:{env['EPHEMERALML_ENCLAVE_CID']}:{ports.enclave}"
    assert int(env["EPHEMERALML_ENCLAVE_CID"]) >= 4
    allocator = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+):\s*(\d+)\s*$", ALLOCATOR.read_text(encoding="utf-8"), re.M)
    }
    assert set(allocator) == {"memory_mib", "cpu_count"}
    assert int(env["EPHEMERALML_ENCLAVE_MEMORY_MIB"]) <= allocator["memory_mib"]
    assert int(env["EPHEMERALML_ENCLAVE_CPU_COUNT"]) <= allocator["cpu_count"]
    assert allocator["cpu_count"] % 2 == 0, "x86 with two threads a core: whole cores"
    # Every variable the units use is defined, by the template or the unit's default.
    for path in (ENCLAVE_UNIT, HOST_UNIT):
        text = path.read_text(encoding="utf-8")
        used = set(re.findall(r"\$\{(\w+)\}", text))
        defined = set(unit_env(unit(path)))
        assert used <= defined, f"{path.name}: {sorted(used - defined)} undefined"


def test_terraform_bootstrap_writes_what_the_units_read() -> None:
    if not BOOTSTRAP.exists():
        pytest.skip(f"{BOOTSTRAP.relative_to(ROOT)} is not in this checkout")
    text = BOOTSTRAP.read_text(encoding="utf-8")
    m = re.search(r'cat > "\$ETC/ephemeralml\.env" <<EOF\n(.*?)\nEOF', text, re.S)
    assert m, "the bootstrap no longer writes /etc/ephemeralml/ephemeralml.env as expected"
    written = {
        line.split("=", 1)[0]
        for line in m.group(1).splitlines()
        if "=" in line and not line.startswith("#")
    }
    for path in (ENCLAVE_UNIT, HOST_UNIT):
        u = unit(path)
        defaults = {k for v in values(u, "Service", "Environment") for k in [v.split("=", 1)[0]]}
        used = set(re.findall(r"\$\{(\w+)\}", path.read_text(encoding="utf-8")))
        missing = used - defaults - written
        assert not missing, (
            f"{path.name} reads {sorted(missing)}, which the bootstrap does not write"
        )
    assert set(env_file(ENV_EXAMPLE)) == written, (
        "the template and the bootstrap name different settings"
    )


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_units_parse() -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(ENCLAVE_UNIT), str(HOST_UNIT)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    # Off an instance the programs and the allocator's unit do not exist; nothing else
    # (an unknown key, a bad value, a bad quote) may be reported.
    benign = (
        re.compile(r"Command /\S+ is not executable: No such file or directory"),
        re.compile(r"Unit nitro-enclaves-allocator\.service not found"),
    )
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    unexpected = [ln for ln in lines if not any(b.search(ln) for b in benign)]
    assert unexpected == []


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    ("path", "threshold"), [(HOST_UNIT, 2.5), (ENCLAVE_UNIT, 4.5)], ids=["host", "enclave"]
)
def test_units_exposure(path: Path, threshold: float) -> None:
    """systemd's own exposure score (0 safest, 10 worst): the host, which needs nothing
    but sockets, must stay "OK"; the enclave's nitro-cli needs its device."""
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    if m is None:
        pytest.skip(
            f"this systemd-analyze has no --offline security check: {done.stderr.strip()[:200]}"
        )
    assert float(m.group(1)) <= threshold, done.stdout[-2000:]
