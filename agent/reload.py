"""Reload planning (SIGHUP): which changed settings apply live, which need a restart, and the
configuration the running service adopts. Pure: the service applies the plan.

Applied live: logging, the status timing and size limits (not its topic), the audio gains, and
the talk settings while push-to-talk runs (it re-announces its groups). Everything else is
named as needing a restart; the running service keeps its old value for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import AgentConfig

__all__ = ["RELOADABLE", "ReloadPlan", "config_changes", "plan_reload"]

# Settings SIGHUP applies live; everything else is reported as needing a restart.
RELOADABLE = ("logging.", "status.interval_s", "status.stale_after_s", "status.max_message_bytes",
              "status.max_nodes", "audio.capture_gain_db", "audio.playback_gain_db")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: AgentConfig, new: AgentConfig) -> tuple[list[str], list[str]]:
    """(reloadable, needs-restart) dotted names of the settings that differ."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    live = [k for k in changed if any(k == r or (r.endswith(".") and k.startswith(r)) for r in RELOADABLE)]
    return live, [k for k in changed if k not in live]


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does. ``config``: the configuration to run with from now on (the old one
    with the live settings of the new one). ``live``/``restart``: dotted names of the settings
    applied / not applied. ``logging_changed``: set logging up again from ``config.logging``.
    ``talk_config``: hand push-to-talk this configuration (``Talk.reconfigure``), or None."""

    config: AgentConfig
    live: list[str]
    restart: list[str]
    logging_changed: bool
    talk_config: AgentConfig | None


def plan_reload(old: AgentConfig, new: AgentConfig, *, talk_running: bool) -> ReloadPlan:
    """The plan for replacing ``old`` with ``new`` while running (push-to-talk running or not)."""
    live, restart = config_changes(old, new)
    status = new.status.model_copy(update={"topic": old.status.topic})
    gains = {k: getattr(new.audio, k) for k in ("capture_gain_db", "playback_gain_db")}
    applied = old.model_copy(update={"logging": new.logging, "status": status,
                                     "audio": old.audio.model_copy(update=gains)})
    talk_config = None
    if talk_running and any(k.startswith("talk.") for k in restart):
        talk_config = new
        restart = [k for k in restart if not k.startswith("talk.")]
        applied = applied.model_copy(update={"talk": new.talk})
    return ReloadPlan(config=applied, live=live, restart=restart,
                      logging_changed=any(k.startswith("logging.") for k in live), talk_config=talk_config)
