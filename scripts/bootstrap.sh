#!/usr/bin/env bash
# Installs what avi-agent needs to build and run on Debian 12 / Raspberry Pi OS bookworm:
# the apt packages (ALSA and systemd headers for pyalsaaudio and systemd-python, iproute2 and
# nftables for the network test rig, systemd-container for the real-systemd test (and, with
# debootstrap + qemu-user-static, the emulated arm64 boot test), libopus0 for
# Opus, espeak-ng and sox for the speech test and bench), then a virtualenv in .venv with the project installed.
# Idempotent and quiet when there is nothing to do. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv python3-dev gcc pkg-config libasound2-dev libasound2-plugins alsa-utils
              libsystemd-dev iproute2 nftables systemd-container libopus0 espeak-ng sox
              debootstrap qemu-user-static  # the emulated arm64 boot test
              chromium)  # chromium: the web monitor's test loads the page in headless Chromium
EXTRAS="${AVI_EXTRAS:-test}"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root for: $* (install sudo or run as root)"; exit 1; fi
}

missing=()
if command -v dpkg-query >/dev/null; then
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing apt packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
else
    say "not a Debian system: make sure these are installed: ${APT_PACKAGES[*]}"
fi

PY=""
for c in python3.13 python3.12 python3.11 python3; do
    # 2>/dev/null: a pyenv shim for a version pyenv has not installed prints "command not found"
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY="$c"; break
    fi
done
[ -n "$PY" ] || { say "Python >= 3.11 is needed (Debian 12 ships 3.11: apt-get install python3)"; exit 1; }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=".venv/.avi-installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-$EXTRAS"
if [ ! -e "$stamp" ]; then
    say "installing avi-agent[$EXTRAS] into .venv (first time takes about a minute)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    rm -f .venv/.avi-installed-*
    touch "$stamp"
fi
