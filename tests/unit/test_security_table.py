"""docs/security.md's table of attacks names tests that exist (issue 7: every row
points at a passing test; the suite itself says whether they pass)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The short names the table uses for the adversarial files.
_ALIASES = {
    "relay": "tests/adversarial/test_relay_attacks.py",
    "faults": "tests/adversarial/test_faults.py",
    "cbor": "tests/adversarial/test_cbor_amplification.py",
    "preauth": "tests/adversarial/test_preauth_limits.py",
}


def _resolve(ref: str) -> tuple[Path, str]:
    where, name = ref.split("::")
    name = name.split("[")[0]
    if where in _ALIASES:
        return ROOT / _ALIASES[where], name
    if "/" in where:
        return ROOT / where, name
    return ROOT / "tests" / "unit" / where, name


def _table_refs() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Attacks and faults, and the tests that cover them", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    refs: list[str] = []
    for row in rows[1:]:  # the header row names no test
        cells = row.split(" | ")
        found = re.findall(r"`([\w./]+\.py::\w+(?:\[[^\]`]*\])?|\w+::\w+(?:\[[^\]`]*\])?)`", cells[-1])
        assert found, f"row names no test: {row[:80]}"
        refs += found
    return refs


def test_every_row_names_tests_that_exist() -> None:
    refs = _table_refs()
    assert len(refs) > 100
    missing = []
    for ref in refs:
        path, name = _resolve(ref)
        if not path.is_file():
            missing.append(f"{ref} (no file {path.relative_to(ROOT)})")
            continue
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in names:
            missing.append(ref)
    assert missing == []
