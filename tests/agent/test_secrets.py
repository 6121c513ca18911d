"""Secrets and resource bounds of `avi-agent run` (issue 9).

- The identity key never leaves the key file: a real agent process at log level DEBUG (py-libp2p
  at DEBUG too) with a known key; its whole stderr log, every STATUS= line and a status message
  received by a test node are searched for the key in every common encoding. The peer id (public)
  does appear, which shows the captures are the real thing.
- A config that would let memory grow without bound is refused with exit 78, naming each field.
"""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import annotated_types
import base58
import trio
from pydantic import BaseModel

from agent.config import AgentConfig
from agent.mesh import AviP2p, AviP2pConfig, Message
from agent.mesh import new_identity, peer_id_of, write_identity
from tests.agent.test_service import AgentProc, NotifySocket, write_config


def encodings(secret: bytes) -> dict[str, bytes]:
    """`secret` as it could show up in a log or a message."""
    b64 = base64.b64encode(secret)
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": b64.rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "base58": base58.b58encode(secret),
        "repr": repr(secret)[2:-1].encode(),  # b'...' as Python would print it
    }


def key_forms(kp) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Every private form of the key: the protobuf in the key file, the 64-byte Ed25519
    private key and its 32-byte seed, each in every encoding."""
    proto = kp.private_key.serialize()
    raw = kp.private_key.to_bytes()
    seed = raw[:32]
    out = {}
    for name, secret in (("protobuf", proto), ("private-key", raw), ("seed", seed)):
        for enc, data in encodings(secret).items():
            out[f"{name}/{enc}"] = data
    return out


def leaks(forms: dict[str, bytes], where: str, data: bytes) -> list[str]:
    return [f"{name} in {where}" for name, needle in forms.items() if needle in data]


async def test_identity_key_is_never_logged_nor_published(tmp_path: Path) -> None:
    key = tmp_path / "state" / "identity.key"
    kp = new_identity()
    write_identity(key, kp)
    peer = peer_id_of(kp)
    forms = key_forms(kp)
    assert key.read_bytes() == kp.private_key.serialize()
    assert all(len(v) >= 32 for v in forms.values())  # long enough never to match by chance

    cfg = write_config(tmp_path / "a.toml", interval=0.5, stale=2.0, level="DEBUG")
    text = cfg.read_text().replace("enable_kad = false", f'enable_kad = false\nidentity_path = "{key}"', 1)
    cfg.write_text(text.replace('journal = "never"', 'journal = "never"\nlibp2p_level = "DEBUG"', 1))
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = AgentProc(["run", "--config", str(cfg)], notify=notify)
    try:
        addr = await trio.to_thread.run_sync(agent.address)
        assert addr.endswith(f"/p2p/{peer}")
        status_msgs: list[bytes] = []
        async with AviP2p.start(AviP2pConfig.local_only()) as (node, events):
            h = node.handle()
            await h.subscribe("avi/status")
            await h.dial(addr)
            with trio.fail_after(20):
                async for ev in events:
                    if isinstance(ev, Message) and ev.topic == "avi/status" and ev.peer_id == peer:
                        status_msgs.append(ev.data)
                        if len(status_msgs) >= 2:
                            break
        await trio.to_thread.run_sync(notify.wait_for, lambda d: d.startswith("STATUS="))
        rc, _ = agent.signal_and_wait(signal.SIGTERM)
        assert rc == 0, agent.log()[-3000:]
        agent._thread.join(5)
        log = agent.log().encode()
        status_lines = "\n".join(t for t in notify.texts() if t.startswith("STATUS=")).encode()
        published = b"\n".join(status_msgs)
        print(f"\n[secrets] log {len(log)} bytes ({log.count(b'DEBUG')} DEBUG lines), "
              f"{status_lines.count(b'STATUS=')} STATUS= lines, {len(status_msgs)} status messages "
              f"({len(published)} bytes); searched {len(forms)} forms of the key; peer id in log "
              f"{log.count(peer.encode())}x, in status messages {published.count(peer.encode())}x, "
              f"in STATUS= {status_lines.count(peer.encode())}x")
        assert log.count(b"DEBUG") >= 10, "the agent did not log at DEBUG: the search proves little"
        assert peer.encode() in log and all(peer.encode() in m for m in status_msgs)
        found = (leaks(forms, "the log", log) + leaks(forms, "STATUS=", status_lines)
                 + leaks(forms, "a status message", published))
        assert found == [], found
        assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes() == kp.private_key.serialize()
    finally:
        agent.kill()
        notify.close()


# --- memory bounds in the config -------------------------------------------------------------

# A size or count that sizes a buffer, queue or table: each must have an upper bound.
UNBOUNDED = {
    "mesh.event_buffer": 10**9,
    "mesh.audio_send_buffer": 10**6,
    "mesh.command_buffer": 10**7,
    "mesh.max_peers": 10**6,
    "mesh.max_audio_streams": 10**5,
    "mesh.max_message_size": 2**40,
    "mesh.pubsub_rate_limit": 10**9,
    "talk.jitter_max_ms": 10**8,
    "talk.max_streams": 10**5,
    "status.max_nodes": 10**9,
    "status.max_message_bytes": 2**31,
    "audio.periods": 10**6,
    "audio.frame_ms": 10**6,
}

# Lists that only the fake hardware reads, sized by the config file itself (not growing at run time).
UNBOUNDED_LISTS_OK = {"audio.xrun_injection.at_frames", "gpio.fake_presses"}


def test_config_that_would_grow_memory_without_bound_exits_78_naming_each_field(tmp_path: Path) -> None:
    import subprocess
    import sys

    sections: dict[str, list[str]] = {}
    for dotted, value in UNBOUNDED.items():
        section, field = dotted.split(".")
        sections.setdefault(section, []).append(f"{field} = {value}")
    cfg = tmp_path / "huge.toml"
    cfg.write_text("\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()) + "\n")
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg)], cwd=root,
                       capture_output=True, text=True, timeout=60)
    named = [f for f in UNBOUNDED if f"{cfg}: {f}: Input should be less than or equal to" in p.stderr]
    print(f"\n[config bounds] exit {p.returncode}; {len(named)}/{len(UNBOUNDED)} fields named: "
          f"{', '.join(named)}")
    assert p.returncode == 78, p.stderr
    assert f"configuration error ({len(UNBOUNDED)} problem(s))" in p.stderr, p.stderr
    assert named == list(UNBOUNDED), p.stderr


def test_every_count_and_size_in_the_config_has_an_upper_bound() -> None:
    """A new int field or list without a maximum fails here until it gets one."""
    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            path = prefix + name
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, path + ".")
                continue
            bounded = any(isinstance(m, (annotated_types.Le, annotated_types.Lt, annotated_types.MaxLen))
                          for m in field.metadata)
            origin = getattr(ann, "__origin__", None)
            if (ann in (int, float) or origin is list) and not bounded and path not in UNBOUNDED_LISTS_OK:
                missing.append(path)

    walk(AgentConfig, "")
    print(f"\n[config bounds] fields without an upper bound: {missing or 'none'}; accepted as is: "
          f"{sorted(UNBOUNDED_LISTS_OK)}")
    assert missing == []
