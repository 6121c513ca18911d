"""Reload planning (agent/reload.py): what SIGHUP applies live and what it names as needing a
restart, without a running service. The whole path (signal, log lines, STATUS=) is in
test_service.py."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.reload import config_changes, plan_reload


def _cfg(**sections: dict) -> AgentConfig:
    return AgentConfig(node={"name": "pi-a"}, **sections)


def test_unchanged_config_plans_nothing() -> None:
    old = _cfg()
    plan = plan_reload(old, _cfg(), talk_running=True)
    assert (plan.live, plan.restart, plan.logging_changed, plan.talk_config) == ([], [], False, None)
    assert plan.config == old


def test_live_settings_apply_and_the_rest_keeps_its_old_value() -> None:
    old = _cfg(status={"interval_s": 1.0, "stale_after_s": 3.0})
    new = _cfg(status={"interval_s": 2.0, "stale_after_s": 6.0, "topic": "other/status"},
               logging={"level": "DEBUG"}, audio={"capture_gain_db": 6.0},
               mesh={"listen_port": 4999})
    live, restart = config_changes(old, new)
    assert live == ["audio.capture_gain_db", "logging.level", "status.interval_s", "status.stale_after_s"]
    assert restart == ["mesh.listen_port", "status.topic"]
    plan = plan_reload(old, new, talk_running=False)
    assert (plan.live, plan.restart) == (live, restart)
    assert plan.logging_changed and plan.config.logging.level == "DEBUG"
    assert plan.config.status.interval_s == 2.0 and plan.config.status.stale_after_s == 6.0
    assert plan.config.audio.capture_gain_db == 6.0
    # not applied: the old value stays until a restart
    assert plan.config.mesh.listen_port == old.mesh.listen_port
    assert plan.config.status.topic == old.status.topic


def test_talk_settings_apply_only_while_talk_runs() -> None:
    old = _cfg(talk={"groups": ["a", "b"]})
    new = _cfg(talk={"groups": ["a", "b", "c"], "current_group": "c"})
    idle = plan_reload(old, new, talk_running=False)
    assert idle.restart == ["talk.current_group", "talk.groups"]
    assert idle.talk_config is None and idle.config.talk == old.talk
    running = plan_reload(old, new, talk_running=True)
    assert running.restart == [] and running.talk_config is new
    assert running.config.talk == new.talk and not running.logging_changed
