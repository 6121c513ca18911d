#!/usr/bin/env bash
# Installs avi-agent as a system service on Raspberry Pi OS bookworm / Debian 12.
#
#   install.sh [--root DIR] [--from DIR | --wheel FILE] [--config FILE]
#   install.sh [--root DIR] --uninstall [--purge]
#
# What it does (each step only when something is missing or different, so a second run changes
# nothing and says "nothing to do"):
#   1. apt packages: alsa-utils libasound2 python3-venv ca-certificates, and what the Python
#      packages without an arm64 wheel build against: fastecdsa (libgmp-dev), pyalsaaudio
#      (libasound2-dev), systemd-python (libsystemd-dev pkg-config), all with python3-dev gcc;
#      on a Pi 5 also liblgpio-dev + swig (rpi-lgpio).
#   2. the `avi` system user (home /var/lib/avi-agent, no login) in the audio and gpio groups
#      (the gpio group is created when the OS has none).
#   3. a venv in /opt/avi-agent/venv with the project installed, extras alsa,systemd (+ rpi on a
#      Pi 1-4, or rpi-lgpio on a Pi 5); re-installed only when the source changed.
#   4. /etc/avi-agent/agent.toml (from --config FILE or the shipped default), never overwritten.
#      On a Raspberry Pi the shipped default is installed with the real devices: [audio] backend
#      "alsa" and [gpio] backend "rpi" (RPi.GPIO, or rpi-lgpio's RPi.GPIO on a Pi 5); elsewhere
#      it keeps the simulated ones ("fake"), and the agent warns about them at every start.
#   5. /etc/systemd/system/avi-agent.service, enabled (started by `systemctl start avi-agent`, or
#      restarted when it was running and something changed).
# --uninstall undoes 2, 3 and 5 (apt packages stay: other software may use them) and keeps the
# config and the identity key (/var/lib/avi-agent) unless --purge.
#
# --root DIR installs into DIR as if it were / (for tests and image building): apt is skipped
# (the packages it would install are printed), the user and groups are written to DIR/etc/passwd
# and DIR/etc/group with useradd/groupadd --prefix, the unit is enabled with systemctl --root,
# and nothing is started. The venv's scripts then name DIR/opt/..., so such a tree is for
# inspection, not for copying to a card.
#
# Environment: AVI_DEVICE_MODEL_FILE (default /proc/device-tree/model) says which board this is.
set -euo pipefail
umask 022
export LC_ALL=C

PROG=install.sh
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASSETS="$(cd "$SCRIPT_DIR/.." && pwd)"

PREFIX=/opt/avi-agent
VENV=$PREFIX/venv
STAMP=$PREFIX/.installed
CONF_DIR=/etc/avi-agent
CONF=$CONF_DIR/agent.toml
UNIT_NAME=avi-agent.service
UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/avi-agent
FIRSTBOOT_STATE=/var/lib/avi-agent-firstboot
FIRSTBOOT_UNIT=avi-agent-firstboot.service
USER_NAME=avi

ROOT=""
MODE=install
PURGE=0
FROM=""
WHEEL=""
CONFIG_SRC=""

usage() {
    # the whole comment block at the top of this file (line 2 up to the first line that is not #)
    sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

say() { printf '[%s] %s\n' "$PROG" "$*"; }
CHANGES=0
did() { CHANGES=$((CHANGES + 1)); say "$*"; }
SKIPPED=()
skip() { SKIPPED+=("$*"); say "skipped (--root): $*"; }
die() {
    printf '[%s] error: %s\n' "$PROG" "$1" >&2
    [ $# -lt 2 ] || printf '[%s]   what to do: %s\n' "$PROG" "$2" >&2
    exit 1
}
STEP="arguments"
trap 'rc=$?; if [ $rc -ne 0 ] && [ "$STEP" != arguments ]; then printf "[%s] error: step \"%s\" failed (exit %s); see the messages above. Fix the cause and run %s again: it resumes where it stopped.\n" "$PROG" "$STEP" "$rc" "$PROG" >&2; fi' EXIT

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory" "e.g. --root /tmp/avi-root"
                ROOT="$2"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --from) [ $# -ge 2 ] || die "--from needs a directory" "give the avi-agent source tree (with pyproject.toml)"
                FROM="$2"; shift 2 ;;
        --wheel) [ $# -ge 2 ] || die "--wheel needs a file" "give an avi_agent-*.whl built with 'pip wheel --no-deps .'"
                 WHEEL="$2"; shift 2 ;;
        --config) [ $# -ge 2 ] || die "--config needs a file" "give the agent.toml to install when none exists"
                  CONFIG_SRC="$2"; shift 2 ;;
        --uninstall) MODE=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; trap - EXIT; exit 0 ;;
        *) die "unknown argument: $1" "run $PROG --help for the options" ;;
    esac
done

[ "$PURGE" -eq 0 ] || [ "$MODE" = uninstall ] || die "--purge only goes with --uninstall" "run: $PROG --uninstall --purge"
[ -z "$FROM" ] || [ -z "$WHEEL" ] || die "--from and --wheel exclude each other" "give one of them"
STEP="start"

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT" || die "cannot create --root $ROOT" "give a writable directory"
    ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != / ] || ROOT=""
fi
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root (it installs packages, a user and a system service)" "run: sudo $0 $*"
fi

R() { printf '%s%s' "$ROOT" "$1"; }
HAVE_SYSTEMD=0
[ -z "$ROOT" ] && [ -d /run/systemd/system ] && HAVE_SYSTEMD=1
systemctl_() { if [ -n "$ROOT" ]; then systemctl --root="$ROOT" "$@"; else systemctl "$@"; fi; }

# ---- users and groups (through NSS on the host, through the files under --root) -------------
PREFIX_OPT=()
[ -z "$ROOT" ] || PREFIX_OPT=(--prefix "$ROOT")
has_group() { if [ -n "$ROOT" ]; then grep -q "^$1:" "$ROOT/etc/group"; else getent group "$1" >/dev/null; fi; }
has_user() { if [ -n "$ROOT" ]; then grep -q "^$1:" "$ROOT/etc/passwd"; else getent passwd "$1" >/dev/null; fi; }
in_group() {  # in_group USER GROUP (supplementary membership)
    local line
    if [ -n "$ROOT" ]; then line="$(grep "^$2:" "$ROOT/etc/group" || true)"; else line="$(getent group "$2" || true)"; fi
    [[ ",${line##*:}," == *",$1,"* ]]
}

seed_root_accounts() {
    # A bare --root has no account files; start them the way base-passwd does (root, audio=29).
    mkdir -p "$ROOT/etc"
    [ -e "$ROOT/etc/passwd" ] || { printf 'root:x:0:0:root:/root:/bin/bash\n' >"$ROOT/etc/passwd"; did "created $ROOT/etc/passwd (root only)"; }
    [ -e "$ROOT/etc/group" ] || { printf 'root:x:0:\naudio:x:29:\n' >"$ROOT/etc/group"; did "created $ROOT/etc/group (root, audio)"; }
    [ -e "$ROOT/etc/shadow" ] || { install -m 0640 /dev/null "$ROOT/etc/shadow"; printf 'root:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"; }
    [ -e "$ROOT/etc/gshadow" ] || { install -m 0640 /dev/null "$ROOT/etc/gshadow"; printf 'root:*::\naudio:*::\n' >"$ROOT/etc/gshadow"; }
}

# ---- board detection --------------------------------------------------------------------------
MODEL_FILE="${AVI_DEVICE_MODEL_FILE:-/proc/device-tree/model}"
MODEL=""
[ -r "$MODEL_FILE" ] && MODEL="$(tr -d '\0' <"$MODEL_FILE")"
BOARD=other
case "$MODEL" in
    *"Raspberry Pi 5"*|*"Raspberry Pi Compute Module 5"*|*"Raspberry Pi 500"*) BOARD=pi5 ;;
    *"Raspberry Pi"*) BOARD=pi ;;
esac

# ==============================================================================================
uninstall() {
    STEP="stop and disable the service"
    for unit in "$UNIT_NAME" "$FIRSTBOOT_UNIT"; do
        if [ -e "$(R "$UNIT_DIR/$unit")" ]; then
            if [ "$HAVE_SYSTEMD" -eq 1 ]; then
                systemctl disable --now "$unit" >/dev/null 2>&1 || true
            else
                systemctl_ disable "$unit" >/dev/null 2>&1 || true
            fi
            rm -f "$(R "$UNIT_DIR/$unit")"
            did "removed $UNIT_DIR/$unit (stopped and disabled)"
        fi
    done
    if [ "$HAVE_SYSTEMD" -eq 1 ]; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" >/dev/null 2>&1 || true
    fi
    [ -z "$ROOT" ] || skip "systemctl stop / daemon-reload (nothing runs under --root)"

    STEP="remove $PREFIX"
    if [ -e "$(R "$PREFIX")" ]; then rm -rf "$(R "$PREFIX")"; did "removed $PREFIX (venv)"; fi

    STEP="remove the $USER_NAME user"
    if [ -z "$ROOT" ] || [ -e "$ROOT/etc/passwd" ]; then
        if has_user "$USER_NAME"; then
            userdel "${PREFIX_OPT[@]}" "$USER_NAME"
            did "removed user $USER_NAME (the gpio and audio groups stay: other software uses them)"
        fi
    fi

    STEP="config and identity"
    if [ "$PURGE" -eq 1 ]; then
        for d in "$CONF_DIR" "$STATE_DIR" "$FIRSTBOOT_STATE"; do
            if [ -e "$(R "$d")" ]; then rm -rf "$(R "$d")"; did "purged $d"; fi
        done
    else
        for d in "$CONF_DIR" "$STATE_DIR"; do
            [ ! -e "$(R "$d")" ] || say "kept $d (remove it with: $PROG --uninstall --purge)"
        done
    fi
    say "apt packages are left installed (other software may use them)"
}

# ==============================================================================================
apt_packages() {
    STEP="apt packages"
    # Build dependencies of the sdists that have no arm64/armhf wheel on PyPI: fastecdsa (pinned by
    # py-libp2p; links gmp), pyalsaaudio (alsa), systemd-python (libsystemd), RPi.GPIO (gcc);
    # python-baseconv and varint are pure Python. ca-certificates: pip reaches PyPI over TLS.
    # libopus0: Opus for push-to-talk (opuslib-next loads it).
    local pkgs=(alsa-utils libasound2 libasound2-dev python3-venv python3-dev gcc pkg-config libsystemd-dev libgmp-dev ca-certificates libopus0)
    [ "$BOARD" != pi5 ] || pkgs+=(liblgpio-dev swig)
    if [ -n "$ROOT" ]; then
        skip "apt-get install ${pkgs[*]}"
        return
    fi
    command -v dpkg-query >/dev/null || die "not a Debian system (no dpkg-query)" \
        "install these packages with your package manager, then run $PROG again: ${pkgs[*]}"
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing apt packages: ${missing[*]}"
    apt-get update -qq || die "apt-get update failed" "check the network and /etc/apt/sources.list, then run $PROG again"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed" "run 'apt-get install ${missing[*]}' to see why, fix it, then run $PROG again"
    did "installed apt packages: ${missing[*]}"
}

accounts() {
    STEP="user and groups"
    [ -z "$ROOT" ] || seed_root_accounts
    local g
    for g in audio gpio; do
        if ! has_group "$g"; then
            groupadd "${PREFIX_OPT[@]}" --system "$g"
            did "created group $g"
        fi
    done
    if ! has_user "$USER_NAME"; then
        useradd "${PREFIX_OPT[@]}" --system --user-group --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin --comment "avi-agent service" --groups audio,gpio "$USER_NAME"
        did "created system user $USER_NAME (groups audio, gpio)"
    else
        for g in audio gpio; do
            if ! in_group "$USER_NAME" "$g"; then
                usermod "${PREFIX_OPT[@]}" --append --groups "$g" "$USER_NAME"
                did "added user $USER_NAME to group $g"
            fi
        done
    fi
    [ -z "$ROOT" ] || skip "useradd/groupadd on the host (wrote $ROOT/etc/passwd and $ROOT/etc/group instead)"
}

source_hash() {
    if [ -n "$WHEEL" ]; then sha256sum <"$WHEEL" | cut -c1-64; return; fi
    (cd "$FROM" && find pyproject.toml agent hw -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        | sort | xargs -d '\n' sha256sum | sha256sum | cut -c1-64)
}

venv() {
    STEP="venv in $VENV"
    local python=python3 v
    command -v "$python" >/dev/null || die "python3 is missing" "apt-get install python3 python3-venv"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "avi-agent needs Python >= 3.11 (found $($python --version 2>&1))" "use Raspberry Pi OS / Debian 12 (bookworm) or newer"
    v="$(R "$VENV")"
    if [ -e "$v" ] && ! "$v/bin/python" -c 'import pip' >/dev/null 2>&1; then
        say "the venv in $VENV is broken (an interrupted install?): making it again"
        rm -rf "$v"
    fi
    if [ ! -e "$v" ]; then
        mkdir -p "$(R "$PREFIX")"
        "$python" -m venv "$v" || die "python3 -m venv failed" "apt-get install python3-venv, then run $PROG again"
        # A current pip with wheel builds the sdists (fastecdsa, pyalsaaudio ... on arm64) as wheels
        # and caches them: a re-install does not compile them again (Debian's pip 23.0 does not).
        "$v/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip wheel \
            || die "pip could not update itself in $VENV" "check the network, then run $PROG again"
        did "created venv $VENV"
    fi

    local extras=alsa,systemd extra_pkgs=()
    case "$BOARD" in
        pi) extras=alsa,systemd,rpi ;;
        pi5) extra_pkgs=("rpi-lgpio>=0.4") ;;  # RPi.GPIO's API on the Pi 5's gpiochip (not RPi.GPIO itself)
    esac
    local want
    want="source=$(source_hash) extras=$extras board=$BOARD ${extra_pkgs[*]}"
    if [ -e "$(R "$STAMP")" ] && [ "$(cat "$(R "$STAMP")")" = "$want" ] && [ -x "$v/bin/avi-agent" ]; then
        return 0
    fi
    local build req
    build="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$build'" RETURN
    if [ -n "$WHEEL" ]; then
        cp "$WHEEL" "$build/"
        req="$build/$(basename "$WHEEL")[$extras]"
    else
        # Build from a copy: the source may be read-only (a bind mount, the boot partition) and a
        # pip build writes build/ and *.egg-info next to pyproject.toml.
        mkdir "$build/src"
        (cd "$FROM" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml agent hw \
            $( [ -e README.md ] && echo README.md )) | tar -xf - -C "$build/src"
        [ -e "$build/src/README.md" ] || printf 'avi-agent\n' >"$build/src/README.md"
        req="$build/src[$extras]"
    fi
    say "installing avi-agent[$extras] ${extra_pkgs[*]} into $VENV (takes a minute or two on a Pi)"
    "$v/bin/python" -m pip uninstall -q -y avi-agent >/dev/null 2>&1 || true
    "$v/bin/python" -m pip install -q --disable-pip-version-check "$req" "${extra_pkgs[@]}" \
        || die "pip could not install avi-agent into $VENV" \
               "check the network and that the apt packages above are installed, then run $PROG again"
    printf '%s\n' "$want" >"$(R "$STAMP")"
    did "installed avi-agent[$extras] into $VENV"
}

docs() {
    STEP="documentation"
    local src="$ASSETS/README.md" dst
    [ -e "$src" ] || return 0
    dst="$(R "$PREFIX/README.md")"
    if ! cmp -s "$src" "$dst"; then install -m 0644 "$src" "$dst"; did "installed $PREFIX/README.md"; fi
}

config() {
    STEP="config $CONF"
    local src="${CONFIG_SRC:-$ASSETS/config/agent.toml}" dst
    [ -r "$src" ] || die "config template $src is missing" "give --config FILE or run $PROG from the avi-agent source tree"
    install -d -m 0755 "$(R "$CONF_DIR")"
    dst="$(R "$CONF")"
    if [ -e "$dst" ]; then
        if [ -n "$CONFIG_SRC" ] && ! cmp -s "$src" "$dst"; then
            say "kept the existing $CONF (not replaced by $CONFIG_SRC: an existing config is never overwritten)"
        fi
        return 0
    fi
    if [ -z "$CONFIG_SRC" ] && [ "$BOARD" != other ]; then
        real_devices <"$src" >"$dst.tmp"
        chmod 0644 "$dst.tmp"
        mv "$dst.tmp" "$dst"
        did "installed $CONF (from $src, with the real devices of a $BOARD: audio alsa, gpio rpi)"
        return 0
    fi
    install -m 0644 "$src" "$dst.tmp"
    mv "$dst.tmp" "$dst"
    did "installed $CONF (from $src)"
    [ "$BOARD" != other ] || say "note: not a Raspberry Pi: $CONF uses the simulated audio and GPIO (backend = \"fake\"); set [audio] backend = \"alsa\" and [gpio] backend = \"rpi\" for real devices"
}

real_devices() {  # the shipped config on stdin, with backend = "fake" -> alsa / rpi in [audio] / [gpio]
    awk '
        /^\[/ { section = $0 }
        section == "[audio]" && /^backend[ \t]*=/ { print "backend = \"alsa\"  # installed on a Raspberry Pi (\"fake\" simulates)"; next }
        section == "[gpio]" && /^backend[ \t]*=/ { print "backend = \"rpi\"  # installed on a Raspberry Pi (\"fake\" simulates)"; next }
        { print }'
}

unit() {
    STEP="systemd unit"
    local src="$ASSETS/systemd/$UNIT_NAME" dst changed=0
    [ -r "$src" ] || die "unit file $src is missing" "run $PROG from the avi-agent source tree"
    dst="$(R "$UNIT_DIR/$UNIT_NAME")"
    install -d -m 0755 "$(R "$UNIT_DIR")"
    if ! cmp -s "$src" "$dst"; then
        install -m 0644 "$src" "$dst"
        did "installed $UNIT_DIR/$UNIT_NAME"
        changed=1
    fi
    if [ "$HAVE_SYSTEMD" -eq 1 ] && [ "$changed" -eq 1 ]; then systemctl daemon-reload; fi
    if [ "$(systemctl_ is-enabled "$UNIT_NAME" 2>/dev/null || true)" != enabled ]; then
        systemctl_ enable "$UNIT_NAME" >/dev/null 2>&1 \
            || die "systemctl enable $UNIT_NAME failed" "run 'systemctl enable $UNIT_NAME' to see why"
        did "enabled $UNIT_NAME (starts at boot)"
    fi
}

check_config() {
    STEP="check the config"
    local bin out rc=0
    bin="$(R "$VENV/bin/avi-agent")"
    [ -x "$bin" ] || return 0
    out="$("$bin" check-config "$(R "$CONF")" 2>&1 >/dev/null)" || rc=$?
    if [ "$rc" -eq 78 ]; then
        printf '%s\n' "$out" >&2
        die "$CONF has errors (listed above); the service will not start with it" \
            "fix $CONF, check it with '$VENV/bin/avi-agent check-config $CONF', then run $PROG again"
    elif [ "$rc" -ne 0 ]; then
        say "note: could not check $CONF with 'avi-agent check-config' (exit $rc): ${out##*$'\n'}"
    fi
}

install_all() {
    if [ -n "$WHEEL" ]; then
        [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file" "build one with: pip wheel --no-deps -w dist ."
        WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
    else
        FROM="${FROM:-$ASSETS}"
        [ -f "$FROM/pyproject.toml" ] || die "$FROM has no pyproject.toml (not an avi-agent source tree)" \
            "give --from DIR (the source tree) or --wheel FILE"
        FROM="$(cd "$FROM" && pwd)"
    fi
    say "board: ${MODEL:-unknown (no $MODEL_FILE)} -> $BOARD"
    apt_packages
    accounts
    venv
    docs
    config
    unit
    check_config
    STEP="start"
    if [ "$HAVE_SYSTEMD" -eq 1 ] && [ "$CHANGES" -gt 0 ] && systemctl is-active -q "$UNIT_NAME"; then
        systemctl restart "$UNIT_NAME"
        say "restarted $UNIT_NAME (it was running)"
    fi
    [ -z "$ROOT" ] || skip "starting or restarting $UNIT_NAME"
}

if [ "$MODE" = uninstall ]; then uninstall; else install_all; fi

STEP="done"
if [ ${#SKIPPED[@]} -gt 0 ]; then
    say "steps skipped because of --root $ROOT:"
    for s in "${SKIPPED[@]}"; do say "  - $s"; done
fi
if [ "$CHANGES" -eq 0 ]; then
    if [ "$MODE" = uninstall ]; then say "nothing to do: avi-agent is not installed"; else
        say "nothing to do: avi-agent is installed and up to date"; fi
else
    say "done ($CHANGES changes)"
    if [ "$MODE" = install ] && [ -z "$ROOT" ] && ! systemctl is-active -q "$UNIT_NAME" 2>/dev/null; then
        say "start it with: systemctl start avi-agent   (then: systemctl status avi-agent)"
    fi
fi
