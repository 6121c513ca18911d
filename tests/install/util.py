"""Helpers for the install / provision / first-boot tests: run the scripts, snapshot trees."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
PROVISION = ROOT / "scripts" / "provision"
FIRSTBOOT = ROOT / "scripts" / "firstboot.sh"


def frozen_source(dest: Path) -> Path:
    """A copy of what a card gets (agent.provision.PAYLOAD): tests install from it, so other
    work going on in the tree cannot change the source between two runs of install.sh."""
    from agent.provision import PAYLOAD

    for rel in PAYLOAD:
        s, d = ROOT / rel, dest / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(s, d)
    return dest


def script_env(**extra: str) -> dict[str, str]:
    """The environment for the scripts: no AVI_* overrides from the caller, and a board model
    file that does not exist (this machine is not a Pi)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVI_")}
    env["AVI_DEVICE_MODEL_FILE"] = "/nonexistent/device-tree-model"
    env.update(extra)
    return env


def run(cmd: list[str], *, timeout: float = 240, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=kw.pop("env", script_env()), **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}")
    return p


def snapshot(tree: Path) -> dict[str, tuple]:
    """path -> (mode, owner, hash or link target) for every entry under ``tree``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(tree))
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[rel] = (oct(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def diff(a: dict[str, tuple], b: dict[str, tuple]) -> list[str]:
    lines = [f"- {k}" for k in sorted(set(a) - set(b))] + [f"+ {k}" for k in sorted(set(b) - set(a))]
    lines += [f"~ {k}: {a[k]} -> {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return lines


def passwd_entry(root: Path, name: str, file: str = "passwd") -> list[str] | None:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None
