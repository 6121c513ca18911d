"""Prepare a Raspberry Pi OS boot partition so the card's first boot becomes a running node.

``scripts/provision`` is the command line; see ``--help`` and README.md ("On a Raspberry Pi"). What lands
on the boot partition (``BOOT``), all under ``BOOT/avi`` except the cmdline hook:

* ``avi/agent.toml``    this node's config (name, talk group, bootstrap peers, audio, pins),
  validated with :func:`agent.config.load_config` before it is written;
* ``avi/identity.key``  optional pre-generated Ed25519 key (0600), with ``avi/peer-id``, so the
  fleet knows the node's peer id before it boots; first boot moves the key off the (world-
  readable FAT) partition into /var/lib/avi-agent;
* ``avi/src/``          the project (or ``avi/*.whl`` + the scripts) that first boot installs;
* ``avi/firstrun.sh``   the early-boot hook, and ``systemd.run=<mount>/avi/firstrun.sh
  systemd.run_success_action=reboot systemd.unit=kernel-command-line.target`` appended to
  ``cmdline.txt``: the mechanism Raspberry Pi Imager uses for its own ``firstrun.sh`` on
  bookworm (systemd's ``systemd-run-generator``). When Imager's customisation already put its
  ``firstrun.sh`` there, our hook is called from inside it instead (a kernel command line has
  room for one ``systemd.run=``).

``--fleet fleet.toml --out DIR`` prepares one such directory per node and prints each peer id;
``--copy DIR/NAME BOOT`` then puts one onto a card. In a fleet file a bootstrap entry may name
another node of the fleet instead of giving a multiaddr: it becomes
``/ip4/<address>/tcp/<listen_port>/p2p/<its peer id>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.config import EX_CONFIG, ConfigError, TalkConfig, load_config, to_toml
from hw.config import AudioConfig, GpioConfig

__all__ = ["NodeSpec", "ProvisionError", "provision_card", "provision_fleet", "copy_card",
           "add_boot_hook", "main"]

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_BOOT_MOUNT = "/boot/firmware"  # where bookworm mounts the boot partition
DEFAULT_LISTEN_PORT = 4001
# What first boot needs from the project (relative to the source tree).
PAYLOAD = ["pyproject.toml", "README.md", "agent", "hw", "config/agent.toml",
           "systemd/avi-agent.service", "systemd/avi-agent-firstboot.service",
           "scripts/install.sh", "scripts/firstboot.sh"]
HOOK_PARAMS = "systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"


class ProvisionError(Exception):
    """A problem with the inputs or the target; the message says what to do. ``exit_code`` is
    what ``provision`` exits with: :data:`EX_CONFIG` (78) for node settings the agent would
    refuse, 1 for everything else."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _default(model: type[BaseModel], name: str) -> Any:
    """The agent's own default for a setting, so provision never writes it a second time."""
    return model.model_fields[name].get_default(call_default_factory=True)


class NodeSpec(BaseModel):
    """One node's settings, as given on the command line or in a fleet file.

    Defaults are the agent's (pins and device from ``GpioConfig``/``AudioConfig``, groups from
    ``TalkConfig``), except the backends (always real devices) and the listen port: a card's
    node listens on :data:`DEFAULT_LISTEN_PORT` so others can bootstrap from it. The ranges are
    checked where the agent checks them: :func:`render_config` loads the result as the agent will.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    groups: list[str] = Field(default_factory=lambda: list(_default(TalkConfig, "groups")))
    bootstrap: list[str] = Field(default_factory=list)
    audio_device: str = _default(AudioConfig, "capture_device")
    button_pin: int = _default(GpioConfig, "button_pin")
    led_pin: int = _default(GpioConfig, "led_pin")
    identity: str | None = None  # None, "new" or a key file
    listen_port: int = DEFAULT_LISTEN_PORT
    address: str | None = None  # only for fleet bootstrap-by-name

    @model_validator(mode="before")
    @classmethod
    def _one_group(cls, data: Any) -> Any:
        """``group = "x"`` (a fleet file's short form) is ``groups = ["x"]``."""
        if isinstance(data, dict) and "group" in data:
            if "groups" in data:
                raise ValueError("give group or groups, not both")
            data = {**data, "groups": [data["group"]]}
            del data["group"]
        return data

    def config_data(self) -> dict[str, Any]:
        """The node's agent.toml as plain data: only what differs per node is written, so the
        shipped defaults (and their later improvements) apply to the rest."""
        return {
            "node": {"name": self.name},
            "mesh": {"listen_port": self.listen_port, "bootstrap_peers": list(self.bootstrap)},
            "audio": {"backend": "alsa", "capture_device": self.audio_device,
                      "playback_device": self.audio_device},
            "gpio": {"backend": "rpi", "button_pin": self.button_pin, "led_pin": self.led_pin},
            "talk": {"groups": list(self.groups)},
        }


def _say(msg: str) -> None:
    print(f"[provision] {msg}", file=sys.stderr)


def render_config(spec: NodeSpec) -> str:
    """TOML for the node, checked by loading it exactly as the agent will (no env overrides)."""
    text = (f"# avi-agent config for node {spec.name!r}, written by scripts/provision.\n"
            "# Everything not set here has the built-in default (see /opt/avi-agent/README.md and\n"
            "# config/agent.toml in the source). Check after editing:\n"
            "#   /opt/avi-agent/venv/bin/avi-agent check-config /etc/avi-agent/agent.toml\n\n"
            + to_toml(spec.config_data()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.toml"
        path.write_text(text)
        try:
            load_config(path, env={})
        except ConfigError as exc:
            lines = [p.replace(str(path), f"node {spec.name!r}") for p in exc.problems]
            raise ProvisionError("invalid node settings:\n  " + "\n  ".join(lines), EX_CONFIG) from None
    return text


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so a pulled card never holds half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _identity(spec: NodeSpec, avi: Path) -> str | None:
    """Put the node's identity key into ``avi/`` and return its peer id (None: no key)."""
    from agent.mesh import IdentityError, new_identity, peer_id_of, read_identity, write_identity

    dst = avi / "identity.key"
    if spec.identity is None:
        return None
    try:
        if dst.exists():
            key = read_identity(dst)
            if spec.identity != "new":
                wanted = read_identity(Path(spec.identity))
                if wanted.private_key.serialize() != key.private_key.serialize():
                    raise ProvisionError(
                        f"{dst} already holds another identity key; delete it to put {spec.identity} there")
            _say(f"{spec.name}: keeping the identity key already in {dst}")
        elif spec.identity == "new":
            key = new_identity()
            write_identity(dst, key)
        else:
            key = read_identity(Path(spec.identity))
            write_identity(dst, key)
    except IdentityError as exc:
        raise ProvisionError(str(exc)) from None
    peer = peer_id_of(key)
    _write(avi / "peer-id", peer + "\n")
    return peer


def _copy_payload(avi: Path, wheel: Path | None) -> None:
    src = avi / "src"
    if src.exists():
        shutil.rmtree(src)
    for old in avi.glob("avi_agent-*.whl"):
        old.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in PAYLOAD:
        if wheel is not None and rel in ("agent", "hw", "pyproject.toml"):
            continue
        s = PROJECT / rel
        if not s.exists():
            raise ProvisionError(f"{s} is missing: run provision from a complete avi-agent source tree")
        d = src / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=ignore)
        else:
            shutil.copy2(s, d)
    if wheel is not None:
        shutil.copy2(wheel, avi / wheel.name)


def add_boot_hook(boot: Path, boot_mount: str = DEFAULT_BOOT_MOUNT) -> str:
    """Make the next boot of this card run ``avi/firstrun.sh`` once; returns what was done."""
    avi = boot / "avi"
    hook = f"{boot_mount}/avi/firstrun.sh"
    _write(avi / "boot-mount", boot_mount + "\n")
    _write(avi / "firstrun.sh",
           "#!/bin/bash\n"
           "# avi-agent early first-boot hook, run once through systemd.run= in cmdline.txt (or from\n"
           "# Raspberry Pi Imager's firstrun.sh). See avi/src/scripts/firstboot.sh.\n"
           f"exec /bin/bash {boot_mount}/avi/src/scripts/firstboot.sh --stage hook --boot {boot_mount}\n",
           mode=0o755)
    cmdline = boot / "cmdline.txt"
    if not cmdline.exists():
        return (f"no {cmdline} (not a boot partition?): the hook is written but not armed; on the "
                f"card run 'bash {hook}' once as root, or copy this directory with --copy")
    line = cmdline.read_text().strip()
    if f"systemd.run={hook}" in line:
        return "cmdline.txt already runs the hook"
    m = re.search(r"(?:^|\s)systemd\.run=(\S+)", line)
    if m is None:
        _write(cmdline, f"{line} systemd.run={hook} {HOOK_PARAMS}\n")
        return f"cmdline.txt now runs {hook} once at the next boot"
    # Imager's customisation owns systemd.run=: call our hook from its script, before the lines
    # that remove it (the first 'rm -f ...firstrun.sh').
    other = boot / Path(m.group(1)).name
    if other.name != "firstrun.sh" or not other.exists():
        raise ProvisionError(
            f"{cmdline} already has systemd.run={m.group(1)}, which is not Raspberry Pi Imager's "
            f"firstrun.sh: remove that parameter (or let it finish with one boot) and run provision again")
    text = other.read_text()
    call = f"/bin/bash {hook} || echo 'avi-agent first-boot hook failed' >&2\n"
    if call in text:
        return f"{other.name} already calls the hook"
    lines = text.splitlines(keepends=True)
    for i, ln in enumerate(lines):
        if re.match(r"\s*rm -f \S*firstrun\.sh", ln):
            lines.insert(i, call)
            _write(other, "".join(lines), mode=0o755)
            return f"Imager's {other.name} now calls {hook} before it removes itself"
    raise ProvisionError(f"{other} has no 'rm -f .../firstrun.sh' line to put the hook before: "
                         "flash the card again without customisation, or add this line yourself "
                         f"near its end: {call.strip()}")


def provision_card(boot: Path, spec: NodeSpec, *, wheel: Path | None = None,
                   boot_mount: str = DEFAULT_BOOT_MOUNT, hook: bool = True) -> str | None:
    """Write everything first boot needs into ``boot``; returns the peer id (None if the node
    makes its own key on first start)."""
    if not boot.is_dir():
        raise ProvisionError(f"{boot} is not a directory: give the mounted boot partition "
                             "(e.g. /media/$USER/bootfs)")
    text = render_config(spec)
    avi = boot / "avi"
    avi.mkdir(exist_ok=True)
    _write(avi / "agent.toml", text)
    peer = _identity(spec, avi)
    _copy_payload(avi, wheel)
    if hook:
        _say(f"{spec.name}: {add_boot_hook(boot, boot_mount)}")
    return peer


def copy_card(prepared: Path, boot: Path, boot_mount: str = DEFAULT_BOOT_MOUNT) -> str:
    """Put a directory made by ``--fleet`` onto a card's boot partition and arm the hook."""
    if not (prepared / "avi" / "agent.toml").exists():
        raise ProvisionError(f"{prepared} was not made by provision --fleet (no avi/agent.toml)")
    dst = boot / "avi"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(prepared / "avi", dst)
    key = dst / "identity.key"
    if key.exists():
        os.chmod(key, 0o600)
    return add_boot_hook(boot, boot_mount)


# ---- fleet files --------------------------------------------------------------------------------

def _spec_from(data: dict[str, Any], where: str, base: Path) -> NodeSpec:
    """A fleet file's node (its [defaults] already merged in); key files are relative to it."""
    data = {"identity": "new", **data}
    ident = data["identity"]
    if isinstance(ident, str) and ident not in ("new", "none"):
        data["identity"] = str((base / ident).resolve())
    elif ident == "none":
        data["identity"] = None
    try:
        return NodeSpec.model_validate(data)
    except ValidationError as exc:
        raise ProvisionError(f"{where}: " + "; ".join(_problem(e) for e in exc.errors(include_url=False))) from None


def _problem(err: Any) -> str:
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {field!r} (expected some of {sorted(['group', *NodeSpec.model_fields])})"
    if err["type"] == "missing":
        return f"every [[node]] needs a {field}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def _merge(defaults: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A node's keys over the [defaults]; ``group`` and ``groups`` are one setting."""
    if "group" in node or "groups" in node:
        defaults = {k: v for k, v in defaults.items() if k not in ("group", "groups")}
    return {**defaults, **node}


def provision_fleet(fleet_file: Path, out: Path, *, wheel: Path | None = None,
                    boot_mount: str = DEFAULT_BOOT_MOUNT) -> dict[str, str | None]:
    """One directory per node under ``out``; returns name -> peer id.

    Identities are made first, so bootstrap entries naming another node can be resolved."""
    try:
        data = tomllib.loads(fleet_file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"{fleet_file}: {exc}") from None
    defaults = data.get("defaults", {})
    nodes = data.get("node", [])
    extra = set(data) - {"defaults", "node"}
    if extra or not nodes:
        raise ProvisionError(f"{fleet_file}: expected a [defaults] table and [[node]] entries"
                             + (f" (unknown: {sorted(extra)})" if extra else " (no [[node]] found)"))
    specs = [_spec_from(_merge(defaults, n), f"{fleet_file}: node {i + 1}", fleet_file.parent)
             for i, n in enumerate(nodes)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProvisionError(f"{fleet_file}: duplicate node names {dupes}")
    out.mkdir(parents=True, exist_ok=True)
    peers: dict[str, str | None] = {}
    for s in specs:  # identities first: bootstrap-by-name needs every peer id
        avi = out / s.name / "avi"
        avi.mkdir(parents=True, exist_ok=True)
        peers[s.name] = _identity(s, avi)
    by_name = {s.name: s for s in specs}
    for s in specs:
        resolved = []
        for b in s.bootstrap:
            if b.startswith("/"):
                resolved.append(b)
                continue
            other = by_name.get(b)
            if other is None:
                raise ProvisionError(f"{fleet_file}: node {s.name!r}: bootstrap {b!r} is neither a "
                                     "multiaddr (/ip4/...) nor a node of this fleet")
            if other.address is None or peers[b] is None:
                raise ProvisionError(f"{fleet_file}: node {b!r} is used as a bootstrap peer, so it needs "
                                     "an address = \"...\" and a pre-generated identity (identity = \"new\")")
            proto = "ip6" if ":" in other.address else "ip4"
            resolved.append(f"/{proto}/{other.address}/tcp/{other.listen_port}/p2p/{peers[b]}")
        placed = s.model_copy(update={"bootstrap": resolved, "identity": None})  # key already in place
        provision_card(out / s.name, placed, wheel=wheel, boot_mount=boot_mount, hook=False)
        add_boot_hook(out / s.name, boot_mount)
    return peers


# ---- command line -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provision",
        description="Prepare a Raspberry Pi OS boot partition (or a directory standing for it) so "
                    "that the first boot installs avi-agent with this node's settings.",
        epilog="Examples:\n"
               "  provision /media/$USER/bootfs --name pi-kitchen --group house \\\n"
               "      --bootstrap /ip4/10.0.0.2/tcp/4001/p2p/12D3KooW... \\\n"
               "      --audio-device plughw:CARD=Device,DEV=0 --button-pin 17 --led-pin 27 --identity new\n"
               "  provision --fleet fleet.toml --out cards/      # one directory per node, prints peer ids\n"
               "  provision --copy cards/pi-kitchen /media/$USER/bootfs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("boot", nargs="?", type=Path, help="mounted boot partition (or a directory)")
    p.add_argument("--name", help="node name (1-64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--group", action="append", dest="groups", metavar="G",
                   help="talk group (repeat for more; the first is used at start)")
    p.add_argument("--bootstrap", nargs="*", default=[], metavar="ADDR",
                   help="bootstrap peers, multiaddrs with /p2p/<peer id>")
    d = NodeSpec.model_fields
    p.add_argument("--audio-device", help="ALSA device (see arecord -L), e.g. plughw:CARD=Device,DEV=0 "
                                          f"(default {d['audio_device'].default!r})")
    p.add_argument("--button-pin", type=int, help=f"PTT button, BCM numbering (default {d['button_pin'].default})")
    p.add_argument("--led-pin", type=int, help=f"status LED, BCM numbering (default {d['led_pin'].default})")
    p.add_argument("--listen-port", type=int, help=f"TCP port of the mesh (default {d['listen_port'].default})")
    p.add_argument("--identity", metavar="new|FILE",
                   help="pre-generate a key (new) or use an existing key file; default: the node makes its own")
    p.add_argument("--fleet", type=Path, help="fleet file: [defaults] and [[node]] tables")
    p.add_argument("--out", type=Path, help="with --fleet: where to put one directory per node")
    p.add_argument("--copy", type=Path, metavar="PREPARED",
                   help="put a directory made by --fleet onto the boot partition given as BOOT")
    p.add_argument("--wheel", type=Path, help="ship this wheel instead of the source tree")
    p.add_argument("--boot-mount", default=DEFAULT_BOOT_MOUNT,
                   help=f"where the Pi mounts the boot partition (default {DEFAULT_BOOT_MOUNT}, bookworm)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    try:
        if a.wheel is not None and not a.wheel.is_file():
            raise ProvisionError(f"--wheel {a.wheel}: no such file")
        if a.fleet is not None:
            if a.out is None or a.boot is not None:
                p.error("--fleet needs --out DIR and no BOOT directory")
            peers = provision_fleet(a.fleet, a.out, wheel=a.wheel, boot_mount=a.boot_mount)
            for name, peer in peers.items():
                print(f"{name}\t{peer or '(made on first start)'}\t{a.out / name}")
            return 0
        if a.boot is None:
            p.error("give the boot directory (or --fleet FILE --out DIR)")
        if a.copy is not None:
            _say(copy_card(a.copy, a.boot, a.boot_mount))
            peer_file = a.boot / "avi" / "peer-id"
            print(peer_file.read_text().strip() if peer_file.exists() else "(made on first start)")
            return 0
        if not a.name:
            p.error("--name is required")
        given = dict(name=a.name, groups=a.groups, bootstrap=a.bootstrap, audio_device=a.audio_device,
                     button_pin=a.button_pin, led_pin=a.led_pin, identity=a.identity,
                     listen_port=a.listen_port)
        spec = NodeSpec(**{k: v for k, v in given.items() if v is not None})
        peer = provision_card(a.boot, spec, wheel=a.wheel, boot_mount=a.boot_mount)
        print(f"{spec.name}\t{peer or '(made on first start)'}\t{a.boot}")
        return 0
    except ProvisionError as exc:
        print(f"provision: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
