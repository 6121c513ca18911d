#!/usr/bin/env bash
# First boot of a card prepared by scripts/provision. Two stages:
#
#   firstboot.sh --stage hook [--boot DIR] [--root DIR]
#       Early boot, no network: run once from the kernel command line (systemd.run=, through
#       <boot>/avi/firstrun.sh), like Raspberry Pi Imager's firstrun.sh. Installs and enables
#       avi-agent-firstboot.service, then removes its own systemd.run= from cmdline.txt; systemd
#       then reboots (systemd.run_success_action=reboot).
#   firstboot.sh [--stage run] [--boot DIR] [--root DIR]
#       Normal boot, after network-online.target (avi-agent-firstboot.service). Steps:
#         config    <boot>/avi/agent.toml -> /etc/avi-agent/agent.toml
#         install   scripts/install.sh --from <boot>/avi/src (or --wheel <boot>/avi/*.whl)
#         identity  <boot>/avi/identity.key -> /var/lib/avi-agent/identity.key (0600, avi),
#                   then deleted from the boot partition (FAT cannot keep it private)
#         start     systemctl enable + restart avi-agent
#         finish    disable avi-agent-firstboot.service, write /var/lib/avi-agent-firstboot/done
#
# Safe to interrupt (power cut): each step is idempotent and leaves a marker
# /var/lib/avi-agent-firstboot/<step>.done when it completed; a new run skips finished steps
# and redoes the interrupted one. --boot defaults to the directory this script was provisioned
# into (<boot>/avi/src/scripts/ -> <boot>); --root DIR works on a tree instead of / (tests),
# and then starts nothing.
set -euo pipefail
umask 022
export LC_ALL=C

PROG=firstboot
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=""
BOOT=""
STAGE=run

say() { printf '[%s] %s\n' "$PROG" "$*"; }
die() {
    printf '[%s] error: %s\n' "$PROG" "$1" >&2
    [ $# -lt 2 ] || printf '[%s]   what to do: %s\n' "$PROG" "$2" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --boot) BOOT="$2"; shift 2 ;;
        --stage) STAGE="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" "see firstboot.sh --help" ;;
    esac
done
[ -n "$BOOT" ] || BOOT="$(cd "$SCRIPT_DIR/../../.." && pwd)"
BOOT="$(cd "$BOOT" && pwd)"
if [ -n "$ROOT" ]; then mkdir -p "$ROOT"; ROOT="$(cd "$ROOT" && pwd)"; [ "$ROOT" != / ] || ROOT=""; fi
AVI="$BOOT/avi"
SRC="$AVI/src"
[ -d "$AVI" ] || die "$AVI does not exist: this card was not prepared by scripts/provision" \
    "run scripts/provision on the boot partition first"

R() { printf '%s%s' "$ROOT" "$1"; }
STATE="$(R /var/lib/avi-agent-firstboot)"
mkdir -p "$STATE"
chmod 0700 "$STATE"
systemctl_() { systemctl --root="${ROOT:-/}" "$@"; }
LIVE=0
[ -z "$ROOT" ] && [ -d /run/systemd/system ] && LIVE=1

# One run at a time (the unit and a person at the console could both start it).
exec 9>"$STATE/lock"
flock -n 9 || die "another firstboot.sh is running" "wait for it: journalctl -u avi-agent-firstboot -f"

# Markers must survive a power cut right after they are written: sync them.
mark() { : >"$STATE/$1.done"; sync "$STATE/$1.done" 2>/dev/null || sync; }
done_() { [ -e "$STATE/$1.done" ]; }
step() {  # step NAME FUNCTION
    if done_ "$1"; then say "step $1: already done"; return 0; fi
    say "step $1: running"
    "$2"
    mark "$1"
    say "step $1: done"
}

# ---- stage hook --------------------------------------------------------------------------------
hook_unit() {
    local dst
    dst="$(R /etc/systemd/system/avi-agent-firstboot.service)"
    mkdir -p "$(dirname "$dst")"
    # The unit names the boot partition as the running system sees it (its mount point).
    sed "s|@BOOT@|$(cat "$AVI/boot-mount" 2>/dev/null || echo "$BOOT")|g" \
        "$SRC/systemd/avi-agent-firstboot.service" >"$dst.tmp"
    chmod 0644 "$dst.tmp"
    mv "$dst.tmp" "$dst"
    systemctl_ enable avi-agent-firstboot.service >/dev/null 2>&1 \
        || die "systemctl enable avi-agent-firstboot.service failed" "run it by hand to see why"
}

hook_cmdline() {
    local f="$BOOT/cmdline.txt" hook
    [ -e "$f" ] || return 0
    hook="$(cat "$AVI/boot-mount" 2>/dev/null || echo "$BOOT")/avi/firstrun.sh"
    grep -qF "systemd.run=$hook" "$f" || return 0
    # Only our own parameters go; everything else on the line stays as it was.
    sed -e "s| systemd.run=$hook||; s| systemd.run_success_action=reboot||; s| systemd.unit=kernel-command-line.target||" \
        "$f" >"$f.avi-tmp"
    mv "$f.avi-tmp" "$f"
    sync
}

# ---- stage run ---------------------------------------------------------------------------------
run_config() {
    local src="$AVI/agent.toml" dst
    [ -e "$src" ] || { say "no $src: keeping the default config"; return 0; }
    dst="$(R /etc/avi-agent/agent.toml)"
    install -d -m 0755 "$(dirname "$dst")"
    install -m 0644 "$src" "$dst.tmp"
    sync "$dst.tmp" 2>/dev/null || true
    mv "$dst.tmp" "$dst"
}

run_install() {
    local args=() wheel
    [ -z "$ROOT" ] || args+=(--root "$ROOT")
    wheel="$(ls "$AVI"/avi_agent-*.whl 2>/dev/null | head -n1 || true)"
    if [ -n "$wheel" ]; then args+=(--wheel "$wheel"); else args+=(--from "$SRC"); fi
    bash "$SRC/scripts/install.sh" "${args[@]}"
}

avi_ids() {  # prints "uid:gid" of the avi user (from the tree's passwd under --root)
    if [ -n "$ROOT" ]; then awk -F: '$1=="avi"{print $3":"$4}' "$ROOT/etc/passwd"; else
        printf '%s:%s\n' "$(id -u avi)" "$(id -g avi)"; fi
}

run_identity() {
    local src="$AVI/identity.key" dir dst ids
    dir="$(R /var/lib/avi-agent)"
    dst="$dir/identity.key"
    if [ -e "$src" ]; then
        ids="$(avi_ids)"
        [ -n "$ids" ] || die "user avi does not exist" "the install step should have created it: run install.sh"
        install -d -m 0700 -o "${ids%:*}" -g "${ids#*:}" "$dir"
        if [ -e "$dst" ] && ! cmp -s "$src" "$dst"; then
            mv "$dst" "$dst.replaced-$(date +%Y%m%d%H%M%S)"
            say "kept the previous identity key as $dst.replaced-*"
        fi
        install -m 0600 -o "${ids%:*}" -g "${ids#*:}" "$src" "$dst.tmp"
        sync "$dst.tmp" 2>/dev/null || true
        mv "$dst.tmp" "$dst"
        say "identity: peer id $(cat "$AVI/peer-id" 2>/dev/null || echo '(see avi/peer-id)') installed"
    elif [ ! -e "$dst" ]; then
        say "no pre-generated identity: the agent creates one on its first start"
    fi
    # The boot partition is FAT (readable by every user): the private key must not stay there.
    if [ -e "$src" ]; then rm -f "$src"; sync; fi
}

run_start() {
    if [ "$LIVE" -eq 1 ]; then
        systemctl daemon-reload
        systemctl enable avi-agent.service >/dev/null 2>&1
        systemctl restart --no-block avi-agent.service
        say "started avi-agent (check it with: systemctl status avi-agent)"
    else
        systemctl_ enable avi-agent.service >/dev/null 2>&1
        say "skipped starting avi-agent (no running systemd${ROOT:+, --root $ROOT})"
    fi
}

run_finish() {
    systemctl_ disable avi-agent-firstboot.service >/dev/null 2>&1 || true
    : >"$STATE/done"
    sync
}

if [ "$STAGE" = hook ]; then
    step hook-unit hook_unit
    step hook-cmdline hook_cmdline
    say "hook finished: avi-agent-firstboot.service runs on the next boot, once the network is up"
elif [ "$STAGE" = run ]; then
    if [ -e "$STATE/done" ]; then say "nothing to do: first boot already finished"; exit 0; fi
    step config run_config
    step install run_install
    step identity run_identity
    step start run_start
    step finish run_finish
    say "first boot finished"
else
    die "unknown --stage $STAGE" "use --stage hook or --stage run"
fi
