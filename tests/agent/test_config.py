"""agent.config: TOML + AVI_* overrides -> AgentConfig, with every problem reported at once."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import agent.config as config_mod
from agent.config import (
    EX_CONFIG,
    AgentConfig,
    ConfigError,
    load_config,
    render_toml,
    to_toml,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "agent.toml"


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


def test_ex_config_is_sysexits_value() -> None:
    assert EX_CONFIG == 78


# --- the shipped default file ----------------------------------------------------------------

def test_shipped_file_loads_to_exactly_the_defaults() -> None:
    assert load_config(SHIPPED, {}) == AgentConfig()


def _sections(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}{name}.")
        else:
            yield prefix.rstrip("."), name


def test_shipped_file_mentions_every_field_in_its_section() -> None:
    text = SHIPPED.read_text()
    # split the file into its [section] blocks
    blocks: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"^\[([a-z_.]+)\]\s*$", line)
        if m:
            current = m.group(1)
            continue
        blocks[current] = blocks.get(current, "") + line + "\n"
    missing = [f"{sec}.{name}" for sec, name in _sections(AgentConfig)
               if not re.search(rf"^(# )?{name} = ", blocks.get(sec, ""), re.M)]
    assert missing == []


def test_shipped_file_has_a_comment_before_every_setting() -> None:
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"line {i + 1} ({line!r}) has no explanation"


# --- files -----------------------------------------------------------------------------------

def test_missing_default_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None, {}) == AgentConfig()


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, '[node]\nname = "pi-hall"\n')
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", p)
    assert load_config(None, {}).node.name == "pi-hall"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    assert problems_of(p) == [f"{p}: file not found"]


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "adir.toml"
    d.mkdir()
    [problem] = problems_of(d)
    assert problem.startswith(f"{d}: cannot read:")


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[node]\nname = "caf\xe9"\n')
    [problem] = problems_of(p)
    assert problem.startswith(f"{p}: cannot read:") and "utf-8" in problem


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, '[node]\nname = "a"\n\n[mesh]\nlisten_port = = 4001\n')
    [problem] = problems_of(p)
    assert problem.startswith(f"{p}:5:")
    assert "TOML syntax error" in problem


def test_out_of_range_message_names_file_field_and_expectation(tmp_path: Path) -> None:
    p = write(tmp_path, "[mesh]\nlisten_port = 70000\n")
    assert problems_of(p) == [
        f"{p}: mesh.listen_port: Input should be less than or equal to 65535 (got 70000)"]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, """
bogus_top = 1
[node]
name = "has space"
[mesh]
listen_port = 70000
lisen_host = "0.0.0.0"
[audio]
rate = 44100
frame_ms = 7
[gpio]
fake_presses = [{ at_s = -1 }]
[talk]
groups = ["a", "a"]
jitter_target_ms = 5
[status]
interval_s = 20
[logging]
level = "LOUD"
journal = "sometimes"
""")
    probs = problems_of(p)
    text = "\n".join(probs)
    expected_fields = [
        "bogus_top: unknown key", "node.name:", "mesh.listen_port:", "mesh.lisen_host: unknown key",
        "audio: frame_ms=7 at rate=44100", "gpio.fake_presses[0].at_s:",
        "gpio.fake_presses[0].duration_s: Field required", "talk.groups: duplicate group names: a",
        "talk.jitter_target_ms: Input should be greater than or equal to 10 (got 5)",
        "status: stale_after_s (15.0) must be greater than interval_s (20.0)",
        "logging.level:", "logging.journal:",
    ]
    for frag in expected_fields:
        assert f"{p}: {frag}" in text, frag
    assert len(probs) == len(expected_fields)
    assert "'auto', 'always' or 'never'" in text  # says what was expected


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    p = write(tmp_path, '[logging]\nlevl = "DEBUG"\n')
    [problem] = problems_of(p)
    assert problem == f"{p}: logging.levl: unknown key (expected one of: level, journal, libp2p_level)"


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "[nodes]\nname = 'x'\n")
    [problem] = problems_of(p)
    assert problem.startswith(f"{p}: nodes: unknown key (expected one of: node, mesh, audio")


def test_wrong_type_for_a_section(tmp_path: Path) -> None:
    p = write(tmp_path, "mesh = 5\n")
    [problem] = problems_of(p)
    assert problem.startswith(f"{p}: mesh: Input should be a valid dictionary") and "(got 5)" in problem


def test_a_full_valid_file(tmp_path: Path) -> None:
    p = write(tmp_path, """
[node]
name = "pi-kitchen"
[mesh]
listen_host = "0.0.0.0"
listen_port = 4001
identity_path = "/var/lib/avi-agent/identity.key"
bootstrap_peers = ["/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"]
[audio]
backend = "alsa"
capture_device = "plughw:CARD=Device,DEV=0"
[gpio]
backend = "rpi"
[talk]
groups = ["kitchen", "all"]
current_group = "all"
[status]
interval_s = 2
stale_after_s = 6
[logging]
level = "debug"
""")
    cfg = load_config(p, {})
    assert cfg.node.name == "pi-kitchen"
    assert cfg.mesh.node_name == "pi-kitchen"  # follows node.name
    assert cfg.mesh.listen_port == 4001
    assert cfg.mesh.identity_path == Path("/var/lib/avi-agent/identity.key")
    assert cfg.audio.backend == "alsa" and cfg.gpio.backend == "rpi"
    assert cfg.talk.active_group == "all"
    assert cfg.status.stale_after_s == 6.0
    assert cfg.logging.level == "DEBUG"


# --- cross-field rules -----------------------------------------------------------------------

def test_mesh_node_name_follows_node_name_and_must_not_contradict_it(tmp_path: Path) -> None:
    assert AgentConfig.model_validate({"node": {"name": "a"}}).mesh.node_name == "a"
    assert load_config(write(tmp_path, '[node]\nname="a"\n[mesh]\nnode_name="a"\n'), {}).mesh.node_name == "a"
    p = write(tmp_path, '[node]\nname="a"\n[mesh]\nnode_name="b"\n', "b.toml")
    [problem] = problems_of(p)
    assert "mesh.node_name ('b') differs from node.name ('a')" in problem


def test_talk_rules(tmp_path: Path) -> None:
    assert AgentConfig().talk.active_group == "default"
    [p1] = problems_of(write(tmp_path, '[talk]\ngroups=["a"]\ncurrent_group="b"\n'))
    assert "current_group 'b' is not one of groups ['a']" in p1
    [p2] = problems_of(write(tmp_path, "[talk]\ngroups=[]\n", "2.toml"))
    assert "talk.groups: List should have at least 1 item" in p2
    [p3] = problems_of(write(tmp_path, "[talk]\nmax_streams=17\n", "3.toml"))
    assert "talk.max_streams (17) exceeds mesh.max_audio_streams (16)" in p3
    [p4] = problems_of(write(tmp_path, "[talk]\njitter_target_ms=300\njitter_max_ms=100\n", "4.toml"))
    assert "jitter_max_ms (100) is below jitter_target_ms (300)" in p4
    [p5] = problems_of(write(tmp_path, '[talk]\ngroups=["ok", "no good"]\n', "5.toml"))
    assert "group name 'no good'" in p5


def test_default_node_name_is_a_valid_host_name() -> None:
    name = AgentConfig().node.name
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name)


# --- environment overrides -------------------------------------------------------------------

def test_env_overrides_nested_fields_and_win_over_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[node]\nname="from-file"\n[mesh]\nlisten_port=5000\n')
    cfg = load_config(p, {
        "AVI_MESH__LISTEN_PORT": "4001",
        "AVI_NODE__NAME": "pi-kitchen",
        "AVI_MESH__ENABLE_MDNS": "false",
        "AVI_STATUS__INTERVAL_S": "2.5",
        "AVI_AUDIO__FAKE_SOURCE__KIND": "silence",
        "AVI_LOGGING__LEVEL": "debug",
        "PATH": "/usr/bin",  # not ours: ignored
    })
    assert cfg.mesh.listen_port == 4001
    assert cfg.node.name == "pi-kitchen" and cfg.mesh.node_name == "pi-kitchen"
    assert cfg.mesh.enable_mdns is False
    assert cfg.status.interval_s == 2.5
    assert cfg.audio.fake_source.kind == "silence"
    assert cfg.logging.level == "DEBUG"


def test_env_lists_as_json_or_comma_separated() -> None:
    assert load_config(None, {"AVI_TALK__GROUPS": '["a", "b"]'}).talk.groups == ["a", "b"]
    assert load_config(None, {"AVI_TALK__GROUPS": " a, b ,c,"}).talk.groups == ["a", "b", "c"]
    assert load_config(None, {"AVI_AUDIO__XRUN_INJECTION__AT_FRAMES": "3,5"}
                       ).audio.xrun_injection.at_frames == [3, 5]
    presses = load_config(None, {"AVI_GPIO__FAKE_PRESSES": '[{"at_s": 1, "duration_s": 0.5}]'})
    assert presses.gpio.fake_presses[0].duration_s == 0.5


def test_env_optional_path_and_empty_means_unset(tmp_path: Path) -> None:
    key = tmp_path / "id.key"
    assert load_config(None, {"AVI_MESH__IDENTITY_PATH": str(key)}).mesh.identity_path == key
    p = write(tmp_path, '[mesh]\nidentity_path = "/x/id.key"\n')
    assert load_config(p, {"AVI_MESH__IDENTITY_PATH": ""}).mesh.identity_path is None


def test_env_table_as_json_object() -> None:
    cfg = load_config(None, {"AVI_AUDIO__FAKE_SINK": '{"kind": "wav", "path": "/tmp/o.wav"}'})
    assert cfg.audio.fake_sink.kind == "wav"


def test_env_errors_name_the_variable() -> None:
    probs = problems_of(None, {
        "AVI_MESH__LISTEN_PORT": "70000",
        "AVI_NODE_NAME": "typo-single-underscore",
        "AVI_MESH__LISTEN_PORTT": "1",
        "AVI_MESH": "5",
        "AVI_TALK__GROUPS": "[not json",
        "AVI_MESH__LISTEN_PORT__X": "1",
    })
    text = "\n".join(probs)
    assert ("AVI_MESH__LISTEN_PORT: mesh.listen_port: Input should be less than or equal to 65535 "
            "(got '70000')") in probs
    assert "AVI_NODE_NAME: looks like a node setting but has no '__'" in text
    assert "AVI_MESH__LISTEN_PORTT: unknown setting 'mesh.listen_portt'" in text
    assert "AVI_MESH: looks like a mesh setting" in text
    assert "AVI_TALK__GROUPS: talk.groups: expected a JSON list" in text
    assert "AVI_MESH__LISTEN_PORT__X: mesh.listen_port is not a table" in text
    assert len(probs) == 6


def test_file_and_env_problems_come_together(tmp_path: Path) -> None:
    p = write(tmp_path, "[mesh]\nmax_peers = 0\n[audio]\nframe_ms = 7\n")
    probs = problems_of(p, {"AVI_STATUS__TOPIC": "has space", "AVI_AUDIO__RATE": "44100"})
    text = "\n".join(probs)
    assert f"{p}: mesh.max_peers: Input should be greater than or equal to 1 (got 0)" in text
    assert "AVI_STATUS__TOPIC: status.topic: String should match pattern" in text
    # a whole-table check that mixes file and env names both
    assert f"{p} + AVI_AUDIO__RATE: audio: frame_ms=7 at rate=44100" in text
    assert len(probs) == 3


def test_toml_syntax_error_still_reports_env_problems(tmp_path: Path) -> None:
    p = write(tmp_path, "[mesh\n")
    probs = problems_of(p, {"AVI_BOGUS__X": "1"})
    assert probs[0].startswith(f"{p}:1:") and probs[1].startswith("AVI_BOGUS__X: unknown setting")


def test_tooling_variables_without_separator_are_not_settings() -> None:
    env = {"AVI_EXTRAS": "test", "AVI_NODE__NAME": "x", "HOME": "/root"}
    assert load_config(None, env).node.name == "x"  # AVI_EXTRAS is scripts/bootstrap.sh's
    assert config_mod.env_overrides(env) == {"AVI_NODE__NAME": "x"}


def test_env_whole_table_needs_json_object() -> None:
    [problem] = problems_of(None, {"AVI_AUDIO__FAKE_SINK": "wav"})
    assert problem.startswith("AVI_AUDIO__FAKE_SINK: audio.fake_sink: expected a JSON object")


# --- rendering -------------------------------------------------------------------------------

def test_render_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, {
        "AVI_NODE__NAME": "pi-kitchen", "AVI_MESH__IDENTITY_PATH": "/var/lib/avi-agent/identity.key",
        "AVI_TALK__GROUPS": 'a,"quoted" b'.replace(" ", "_").replace('"', ""),
        "AVI_GPIO__FAKE_PRESSES": '[{"at_s": 1, "duration_s": 2}, {"at_s": 5, "duration_s": 1}]',
    })
    text = render_toml(cfg)
    assert "[[gpio.fake_presses]]" in text and 'identity_path = "/var/lib/avi-agent/identity.key"' in text
    assert "# current_group = (not set)" in text
    p = write(tmp_path, text, "rendered.toml")
    assert load_config(p, {}) == cfg


def test_render_defaults_round_trips(tmp_path: Path) -> None:
    p = write(tmp_path, render_toml(AgentConfig()))
    assert load_config(p, {}) == AgentConfig()


def test_to_toml_escapes_and_rejects_what_toml_cannot_hold() -> None:
    data = {"s": 'q"uo\\te\n\ttab\x01 é 😀', "weird key": 1, "f": 1e300, "neg": -0.5, "big": 2**62,
            "nested": {"deeper": {"x": [1, 2]}}, "inline": [{"a": 1}, 2]}
    assert tomllib.loads(to_toml(data)) == data
    with pytest.raises(TypeError):
        to_toml({"x": object()})
    with pytest.raises(TypeError):
        to_toml({"x": [1, None]})
    assert tomllib.loads(to_toml({"x": float("inf")}))["x"] == math.inf


_scalars = (st.text(max_size=20) | st.integers(min_value=-2**63, max_value=2**63 - 1)
            | st.floats(allow_nan=False) | st.booleans())
_keys = st.text(min_size=1, max_size=10)
_values = st.recursive(
    _scalars | st.lists(_scalars, max_size=4),
    lambda inner: st.dictionaries(_keys, inner, max_size=4) | st.lists(
        st.dictionaries(_keys, inner, min_size=1, max_size=3), min_size=1, max_size=3),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_to_toml_round_trips_arbitrary_plain_data(data: dict) -> None:
    assert tomllib.loads(to_toml(data)) == data


def test_env_override_under_a_non_table_file_value(tmp_path: Path) -> None:
    p = write(tmp_path, "mesh = 5\n")
    probs = problems_of(p, {"AVI_MESH__LISTEN_PORT": "4001"})
    assert f"AVI_MESH__LISTEN_PORT: mesh.listen_port: cannot override, {p} sets mesh to a non-table value" in probs
    assert any(x.startswith(f"{p}: mesh: Input should be a valid dictionary") for x in probs)


# --- renamed settings (old names still load, with a warning) ---------------------------------

OLD_MESH_NAMES = {"keepalive_interval": 0.5, "stream_timeout": 2.0, "request_timeout": 3.0,
                  "gossip_heartbeat": 0.7, "discovery_interval": 20.0}


def test_old_mesh_time_names_load_with_a_warning_naming_the_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write(tmp_path, "[mesh]\n" + "".join(f"{k} = {v}\n" for k, v in OLD_MESH_NAMES.items()))
    with caplog.at_level("WARNING", logger="agent.config"):
        cfg = load_config(p, {})
    for old, value in OLD_MESH_NAMES.items():
        assert getattr(cfg.mesh, old + "_s") == value
        assert any(str(p) in r.getMessage() and f"mesh.{old} is deprecated" in r.getMessage()
                   and f"mesh.{old}_s" in r.getMessage() for r in caplog.records), old
    # check-config writes the new names only
    assert "stream_timeout_s = 2.0" in render_toml(cfg) and "stream_timeout =" not in render_toml(cfg)


def test_old_mesh_time_name_in_env_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="agent.config"):
        cfg = load_config(None, {"AVI_MESH__STREAM_TIMEOUT": "6"})
    assert cfg.mesh.stream_timeout_s == 6.0
    assert any(r.getMessage() == "AVI_MESH__STREAM_TIMEOUT: mesh.stream_timeout is deprecated: it is now "
               "mesh.stream_timeout_s (write AVI_MESH__STREAM_TIMEOUT_S)" for r in caplog.records)


def test_old_and_new_name_together_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "[mesh]\nstream_timeout = 5.0\nstream_timeout_s = 6.0\n")
    probs = problems_of(p)
    assert len(probs) == 1 and "stream_timeout is the old name of stream_timeout_s" in probs[0]
    assert probs[0].startswith(f"{p}: mesh:")


def test_new_names_load_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = write(tmp_path, "[mesh]\n" + "".join(f"{k}_s = {v}\n" for k, v in OLD_MESH_NAMES.items()))
    with caplog.at_level("WARNING", logger="agent.config"):
        cfg = load_config(p, {})
    assert cfg.mesh.request_timeout_s == 3.0
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


# --- local_only: the one loopback config of tests, benches and tools ---------------------------

def test_local_only_is_loopback_fake_devices_and_merges_tables(tmp_path: Path) -> None:
    from agent.config import local_only

    data = local_only("pi-a", mesh={"listen_port": 5000}, audio={"fake_sink": {"kind": "null"}},
                      talk={"groups": ["g"]})
    cfg = load_config(write(tmp_path, to_toml(data)), {})
    assert (cfg.node.name, cfg.mesh.listen_host, cfg.mesh.listen_port) == ("pi-a", "127.0.0.1", 5000)
    assert (cfg.mesh.enable_mdns, cfg.mesh.enable_kad) == (False, False)
    assert (cfg.audio.backend, cfg.gpio.backend, cfg.logging.journal) == ("fake", "fake", "never")
    assert cfg.talk.groups == ["g"] and cfg.status == AgentConfig().status
    # nested tables merge key by key; the caller's value wins
    deep = local_only(audio={"fake_source": {"kind": "silence"}}, mesh={"enable_kad": True})
    assert deep["audio"] == {"backend": "fake", "fake_source": {"kind": "silence"}}
    assert deep["mesh"]["enable_kad"] is True and deep["mesh"]["enable_mdns"] is False


def test_local_only_checks_what_it_is_given() -> None:
    from pydantic import ValidationError

    from agent.config import local_only

    with pytest.raises(ValidationError, match="intervall_s"):
        local_only(status={"intervall_s": 1.0})
