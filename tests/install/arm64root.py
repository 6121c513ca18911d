"""A Debian 12 arm64 root, as on a Raspberry Pi 4/5 running 64-bit Raspberry Pi OS, built here
under emulation (debootstrap + qemu-user-static through binfmt_misc) and cached OUTSIDE the
checkout, keyed on its inputs, so only the first run pays for it.

Layers (each a directory under ``$AVI_TEST_CACHE/arm64``, default /var/cache/avi-agent-test):

``base-<key>``
    ``debootstrap --variant=minbase`` plus what Raspberry Pi OS Lite ships that matters here
    (python3, systemd, dbus, ca-certificates, iproute2). Key: suite, mirror, package list.
``installed-<key>``
    a copy of the base in which ``scripts/install.sh`` ran (chroot, this machine's network, a
    Pi 4 model file): every apt package it installs and the venv with avi-agent and all its
    dependencies, the arm64 sdists (fastecdsa, pyalsaaudio, systemd-python, RPi.GPIO ...) built
    under emulation. Key: base key, the apt package lists in install.sh, the dependencies in
    pyproject.toml.
    pip's wheel cache (``pip/``) and apt's archives (``apt-archives/``) are kept next to them,
    so even a rebuild of this layer does not download or compile twice.

A test never writes into a cached layer: it runs on an overlay (see :func:`overlay`), and runs
install.sh again there with the current source (quick: the apt packages and the dependencies
are already installed, only avi-agent itself is rebuilt).

Also a script: ``python -m tests.install.arm64root build`` builds (or finds) both layers and
prints their paths and build times (used to start the slow cold build ahead of a test run).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What Raspberry Pi OS Lite (bookworm, arm64) has that install.sh relies on being there.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "ca-certificates", "iproute2"]
BASE_RECIPE = "1"
INSTALLED_RECIPE = "1"
PI4_MODEL = "Raspberry Pi 4 Model B Rev 1.4\0"
# Units that would only burn emulated CPU in a test container (apt's daily jobs and the like).
MASK = ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
        "systemd-timesyncd.service", "getty@tty1.service", "console-getty.service"]


class Unavailable(Exception):
    """This machine cannot run arm64 programs (the test skips with this reason)."""


def cache_dir() -> Path:
    return Path(os.environ.get("AVI_TEST_CACHE", "/var/cache/avi-agent-test")) / "arm64"


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_key() -> str:
    return _sha(BASE_RECIPE, SUITE, MIRROR, *BASE_PACKAGES)


def install_inputs(src: Path = ROOT) -> str:
    """The inputs of the installed layer: install.sh's apt package lists and the dependencies in
    pyproject.toml (the ones a Pi installs: the base and the alsa, systemd and rpi extras)."""
    script = (src / "scripts/install.sh").read_text()
    apt_lines = [line.strip() for line in script.splitlines() if re.search(r"\bpkgs\+?=\(", line)]
    if not apt_lines:
        raise RuntimeError("scripts/install.sh: no 'pkgs=(...)' line (the cache key needs the apt list)")
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    deps = project.get("dependencies", []) + [
        d for extra in ("alsa", "systemd", "rpi") for d in project.get("optional-dependencies", {}).get(extra, [])]
    return "\n".join(apt_lines) + "\n" + "\n".join(deps) + "\n" + project.get("requires-python", "")


def installed_key(src: Path = ROOT) -> str:
    return _sha(INSTALLED_RECIPE, base_key(), PI4_MODEL, install_inputs(src))


def sh(cmd: list[str], *, timeout: float, log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure raise with the tail of its output (also appended to ``log``)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}  (exit {p.returncode})\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


# ---- binfmt_misc ------------------------------------------------------------------------------
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_binfmt() -> None:
    """Make arm64 programs run: qemu-user-static installed, binfmt_misc mounted, the aarch64
    handler registered (with the F flag, so it works inside chroots and containers). Raises
    :class:`Unavailable` with the reason when this machine cannot do it."""
    conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
    if not conf.exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], capture_output=True,
                       timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not conf.exists():
        raise Unavailable("qemu-user-static is not installed (no /usr/lib/binfmt.d/qemu-aarch64.conf) "
                          "and `apt-get install qemu-user-static` failed")
    if not (BINFMT / "register").exists():
        p = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                           text=True)
        if not (BINFMT / "register").exists():
            raise Unavailable(f"binfmt_misc cannot be mounted here ({p.stderr.strip() or 'no register file'})")
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        try:
            (BINFMT / "register").write_text(conf.read_text().strip())
        except OSError as exc:
            if not entry.exists():  # a concurrent registration is fine
                raise Unavailable(f"cannot register the aarch64 binfmt handler: {exc}") from None
    text = entry.read_text()
    if "enabled" not in text.splitlines()[0]:
        raise Unavailable(f"the aarch64 binfmt handler is registered but disabled:\n{text}")
    if (BINFMT / "status").read_text().strip() != "enabled":
        raise Unavailable("binfmt_misc is disabled on this machine")


# ---- building the layers ----------------------------------------------------------------------
@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def chroot_mounts(root: Path, binds: dict[Path, str] | None = None) -> Iterator[None]:
    """/proc, /sys, /dev and extra bind mounts (host dir -> path in root) for a chroot."""
    mounted: list[Path] = []
    try:
        for args, target in ((["-t", "proc", "proc"], "proc"), (["-t", "sysfs", "sys"], "sys"),
                             (["--rbind", "/dev"], "dev")):
            t = root / target
            t.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(t)], check=True)
            mounted.append(t)
        for host, inside in (binds or {}).items():
            host.mkdir(parents=True, exist_ok=True)
            t = root / inside.lstrip("/")
            t.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(host), str(t)], check=True)
            mounted.append(t)
        yield
    finally:
        for t in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(t)], capture_output=True)


def chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
            # this machine's CA bundle: PyPI is reached through it (see facts.md)
            "PIP_CERT": "/etc/avi-test/ca.crt", "PIP_DEFAULT_TIMEOUT": "180",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}


def prepare_network_files(root: Path) -> None:
    """What a chroot on this machine's network needs to reach Debian and PyPI."""
    (root / "etc/avi-test").mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/avi-test/ca.crt")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copy("/etc/resolv.conf", resolv)


def build_base(log: Path) -> tuple[Path, float | None]:
    """The base layer (cached); returns (path, seconds spent building or None when cached)."""
    key = base_key()
    dest = cache_dir() / f"base-{key}"
    with _locked(f"base-{key}"):
        if (dest / ".avi-complete").exists():
            return dest, None
        ensure_binfmt()
        t0 = time.monotonic()
        tmp = cache_dir() / f"base-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        sh(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            SUITE, str(tmp), MIRROR], timeout=3600, log=log)
        finish_base(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest, time.monotonic() - t0


def finish_base(root: Path) -> None:
    (root / "etc/hostname").write_text("avi-arm64\n")
    (root / "etc/machine-id").write_text("")  # systemd fills it at boot, like a fresh image
    subprocess.run(["systemctl", f"--root={root}", "mask", *MASK], capture_output=True)
    (root / ".avi-complete").write_text(base_key() + "\n")


def run_install(root: Path, src: Path, log: Path, *, timeout: float = 3600) -> None:
    """``scripts/install.sh --from SRC`` inside ``root`` (a chroot with this machine's network),
    as on a Pi 4: AVI_DEVICE_MODEL_FILE names a model file with the Pi's text."""
    prepare_network_files(root)
    (root / "etc/avi-test/model").write_text(PI4_MODEL)
    binds = {src: "/root/avi-src", cache_dir() / "pip": "/root/.cache/pip",
             cache_dir() / "apt-archives": "/var/cache/apt/archives"}
    with chroot_mounts(root, binds):
        env = chroot_env() | {"AVI_DEVICE_MODEL_FILE": "/etc/avi-test/model"}
        sh(["chroot", str(root), "/bin/bash", "/root/avi-src/scripts/install.sh", "--from", "/root/avi-src"],
           timeout=timeout, log=log, env=env)


def build_installed(src: Path, log: Path) -> tuple[Path, float | None, float | None]:
    """The installed layer (cached): (path, base build seconds, install seconds), None = cached."""
    base, base_s = build_base(log)
    key = installed_key(src)
    dest = cache_dir() / f"installed-{key}"
    with _locked(f"installed-{key}"):
        if (dest / ".avi-complete").exists():
            return dest, base_s, None
        ensure_binfmt()
        t0 = time.monotonic()
        tmp = cache_dir() / f"installed-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        sh(["cp", "-a", "--reflink=auto", str(base), str(tmp)], timeout=600)
        (tmp / ".avi-complete").unlink()
        run_install(tmp, src, log)
        (tmp / ".avi-complete").write_text(key + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        prune(keep={base.name, dest.name})
        return dest, base_s, time.monotonic() - t0


def prune(keep: set[str]) -> None:
    """Remove layers of older inputs (each is ~1 GB); the pip and apt caches stay."""
    for d in cache_dir().iterdir():
        if d.is_dir() and d.name.startswith(("base-", "installed-")) and d.name not in keep \
                and not d.name.endswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def overlay(lower: Path, size: str = "3g") -> Iterator[Path]:
    """A writable view of a cached layer (tmpfs upper): the cache itself is never changed."""
    base = Path(tempfile.mkdtemp(prefix="avi-arm64-", dir="/run"))
    merged = base / "merged"
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(base)], check=True)
        mounted.append(base)
        for d in ("up", "wk", "merged"):
            (base / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={base}/up,workdir={base}/wk", str(merged)], check=True)
        mounted.append(merged)
        yield merged
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(m)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def frozen_copy(dest: Path) -> Path:
    """What install.sh --from needs, copied (the tree may change while a test runs)."""
    for rel in ("pyproject.toml", "README.md", "agent", "hw", "config", "systemd", "scripts"):
        s, d = ROOT / rel, dest / rel
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif s.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)
    return dest


def main(argv: list[str]) -> int:
    if argv[1:] != ["build"]:
        print("usage: python -m tests.install.arm64root build", file=sys.stderr)
        return 2
    log = cache_dir() / "build.log"
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = frozen_copy(Path(tmp) / "src")
        path, base_s, inst_s = build_installed(src, log)
    print(f"installed layer: {path}")
    print(f"base build: {'cached' if base_s is None else f'{base_s:.0f} s'}; "
          f"install.sh layer: {'cached' if inst_s is None else f'{inst_s:.0f} s'}; log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
