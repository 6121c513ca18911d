"""agent.mesh's surface is its package: every module behind it is private (`_node.py`, ...), the
names it exports all resolve, and nothing outside the package and its tests imports a private
module (the agent, benches, scripts and examples use `agent.mesh` only)."""

from __future__ import annotations

import re
from pathlib import Path

import agent.mesh

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "agent" / "mesh"


def test_every_module_behind_the_package_is_private() -> None:
    public = [p.name for p in MESH.glob("*.py") if p.name != "__init__.py" and not p.name.startswith("_")]
    assert public == [], f"public modules in agent/mesh: {public} (name them _x.py, export from __init__)"


def test_every_exported_name_resolves() -> None:
    missing = [name for name in agent.mesh.__all__ if getattr(agent.mesh, name, None) is None]
    assert missing == []


def test_nothing_outside_the_package_imports_its_private_modules() -> None:
    private = re.compile(r"agent\.mesh\._\w+|from agent\.mesh import _\w+")
    offenders = []
    for base in ("agent", "hw", "bench", "scripts"):
        for path in (ROOT / base).rglob("*.py"):
            if path.is_relative_to(MESH) and not path.is_relative_to(MESH / "examples"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if private.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
