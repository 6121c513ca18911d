"""The whole agent's configuration: one pydantic model, loaded from TOML plus ``AVI_*`` overrides.

Precedence (lowest first): model defaults, the TOML file, ``AVI_<SECTION>__<FIELD>`` environment
variables. Every model forbids unknown keys, so a typo is an error, never silently ignored.
Problems are collected and raised together as one :class:`ConfigError`; ``avi-agent`` turns that
into exit status :data:`EX_CONFIG` (78) so systemd does not restart a node in a loop over a file
that will not fix itself (``RestartPreventExitStatus=78`` in the unit).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.mesh import AviP2pConfig
from hw.config import AudioConfig, GpioConfig

__all__ = [
    "EX_CONFIG",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ConfigError",
    "NodeConfig",
    "TalkConfig",
    "StatusConfig",
    "LoggingConfig",
    "MetricsConfig",
    "DEFAULT_METRICS_LISTEN",
    "parse_host_port",
    "AgentConfig",
    "load_config",
    "local_only",
    "env_overrides",
    "render_toml",
    "to_toml",
]

log = logging.getLogger(__name__)

EX_CONFIG = 78  # sysexits.h: configuration error
DEFAULT_CONFIG_PATH = Path("/etc/avi-agent/agent.toml")
ENV_PREFIX = "AVI_"
ENV_SEPARATOR = "__"

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(Exception):
    """Every problem found in one load, each a line ``<file or env var>: <field.path>: <what>``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_node_name() -> str:
    """The short host name, so every Pi gets a distinct name without configuration."""
    name = socket.gethostname().split(".")[0][:64]
    return name if re.match(_NAME_RE, name) else "avi-node"


class NodeConfig(_Section):
    name: str = Field(default_factory=_default_node_name, min_length=1, max_length=64,
                      pattern=_NAME_RE, description="shown to the fleet; default: the host name")


class TalkConfig(_Section):
    groups: list[str] = Field(default_factory=lambda: ["default"], min_length=1, max_length=32)
    current_group: str | None = Field(None, description="None = the first of groups")
    jitter_target_ms: int = Field(40, ge=10, le=500,
                                  description="the adaptive jitter buffer's lowest target delay")
    jitter_max_ms: int = Field(220, ge=20, le=2000,
                               description="the adaptive jitter buffer's highest delay: with 40 ms "
                               "packets and the sink's frame, mouth-to-ear stays within the "
                               "push-to-talk budget of 300 ms (3GPP TS 22.179)")
    codec: Literal["opus", "pcm"] = Field("opus", description="sent to peers that decode it; "
                                          "PCM S16LE to the others (and when libopus is missing)")
    opus_bitrate: int = Field(32_000, ge=6_000, le=510_000, description="bit/s")
    opus_frame_ms: Literal[20, 40] = Field(40, description="audio per packet: 40 halves the "
                                           "framing overhead on the wire, 20 is 20 ms quicker")
    opus_fec: bool = Field(False, description="Opus in-band FEC: only helps where frames are "
                           "lost for good (TCP retransmits them), and costs quality")
    dtx: bool = Field(False, description="discontinuous transmission: silent packets are not sent "
                      "to listeners that announce they play the gaps as silence (older nodes get every packet); "
                      "off by default: it saves 5-8 % of the bytes, and at 5 % loss it made the speech worse "
                      "in 3 of 7 same-run bench runs (see the README)")
    max_streams: int = Field(4, ge=1, le=64, description="incoming streams mixed at once")
    relay_fanout: int = Field(4, ge=1, le=32, description="streams a talker (or a relay) sends at most")
    max_talk_s: float = Field(120.0, gt=0.0, le=3600.0,
                              description="a stuck button stops transmitting after this")

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not (1 <= len(g) <= 64 and re.match(_NAME_RE, g)):
                raise ValueError(f"group name {g!r} must be 1-64 of A-Z a-z 0-9 . _ - "
                                 "and start with a letter or digit")
        dupes = sorted({g for g in v if v.count(g) > 1})
        if dupes:
            raise ValueError(f"duplicate group names: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _check_current(self) -> "TalkConfig":
        if self.current_group is not None and self.current_group not in self.groups:
            raise ValueError(f"current_group {self.current_group!r} is not one of groups {self.groups}")
        if self.jitter_max_ms < self.jitter_target_ms:
            raise ValueError(f"jitter_max_ms ({self.jitter_max_ms}) is below "
                             f"jitter_target_ms ({self.jitter_target_ms})")
        return self

    @property
    def active_group(self) -> str:
        return self.current_group if self.current_group is not None else self.groups[0]


class StatusConfig(_Section):
    topic: str = Field("avi/status", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._/-]+$")
    interval_s: float = Field(5.0, ge=0.5, le=3600.0)
    stale_after_s: float = Field(15.0, ge=1.0, le=86400.0)
    max_message_bytes: int = Field(4096, ge=256, le=65536,
                                   description="larger status messages from peers are dropped")
    max_nodes: int = Field(256, ge=1, le=10000, description="bound on the fleet view")

    @model_validator(mode="after")
    def _stale_after_interval(self) -> "StatusConfig":
        if self.stale_after_s <= self.interval_s:
            raise ValueError(f"stale_after_s ({self.stale_after_s}) must be greater than "
                             f"interval_s ({self.interval_s})")
        return self


class LoggingConfig(_Section):
    level: LogLevel = "INFO"
    journal: Literal["auto", "always", "never"] = Field(
        "auto", description="auto = journald when stderr is the journal (JOURNAL_STREAM)")
    libp2p_level: LogLevel = Field("WARNING", description="py-libp2p is chatty below WARNING")

    @field_validator("level", "libp2p_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


def parse_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port); ValueError saying why."""
    text = text.strip()
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = "", text
    host = host.strip("[]") or default_host
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{text!r} is not HOST:PORT (the port {port_s!r} is not a number)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0-65535")
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    return host, port


class MetricsConfig(_Section):
    """The node's Prometheus endpoint (``/metrics``) and ``/status`` for ``avi-agent status``."""

    listen: str = Field(DEFAULT_METRICS_LISTEN, max_length=300,
                        description='HOST:PORT to serve /metrics on; "" = off. Localhost by default: '
                                    'use 0.0.0.0:9464 for a Prometheus server elsewhere')

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        if v.strip():
            parse_host_port(v)
        return v.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_host_port(self.listen) if self.listen else None


class AgentConfig(BaseModel):
    """Everything ``avi-agent run`` needs. ``mesh.node_name`` follows ``node.name``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeConfig = Field(default_factory=NodeConfig)
    mesh: AviP2pConfig = Field(default_factory=AviP2pConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    talk: TalkConfig = Field(default_factory=TalkConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "AgentConfig":
        problems = []
        if "node_name" in self.mesh.model_fields_set:
            if self.mesh.node_name != self.node.name:
                problems.append(f"mesh.node_name ({self.mesh.node_name!r}) differs from node.name "
                                f"({self.node.name!r}); set node.name only")
        else:
            # Frozen model: this is the one place the agent derives a field from another.
            object.__setattr__(self, "mesh", self.mesh.model_copy(update={"node_name": self.node.name}))
        if self.talk.max_streams > self.mesh.max_audio_streams:
            problems.append(f"talk.max_streams ({self.talk.max_streams}) exceeds "
                            f"mesh.max_audio_streams ({self.mesh.max_audio_streams})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def local_only(name: str = "avi-local", **sections: Mapping[str, Any]) -> dict[str, Any]:
    """An agent.toml (as plain data, for :func:`to_toml` or ``AgentConfig.model_validate``) for an
    agent that keeps to this machine: the mesh on 127.0.0.1 with mDNS and the DHT off
    (:meth:`AviP2pConfig.local_only`), fake audio and GPIO, logs to stderr. ``sections`` are merged
    over that, table by table (``mesh={"listen_port": 0}`` keeps the rest of [mesh]). Checked
    here, so a mistake names the caller's setting rather than failing in a started agent."""
    data: dict[str, Any] = {
        "node": {"name": name},
        "mesh": _local_mesh(),
        "audio": {"backend": "fake"},
        "gpio": {"backend": "fake"},
        "logging": {"journal": "never"},
    }
    for section, values in sections.items():
        data[section] = _merged(data.get(section, {}), values)
    AgentConfig.model_validate(data)
    return data


def _local_mesh() -> dict[str, Any]:
    """The [mesh] settings that :meth:`AviP2pConfig.local_only` sets (and only those)."""
    local = AviP2pConfig.local_only()
    return {k: getattr(local, k) for k in AviP2pConfig.model_fields if k in local.model_fields_set}


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ---------------------------------------------------------------------------------------------
# Loading

def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> AgentConfig:
    """Read ``path`` (default :data:`DEFAULT_CONFIG_PATH`), apply ``AVI_*`` overrides, validate.

    A missing *default* file means all defaults; a missing file given explicitly is an error.
    Raises :class:`ConfigError` listing every problem found.
    """
    explicit = path is not None
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    label = str(path)
    problems: list[str] = []
    data: dict[str, Any] = {}
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if explicit:
            problems.append(f"{label}: file not found")
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{label}: cannot read: {exc}")
        text = None
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            problems.append(_toml_error(label, exc))

    # Old setting names (e.g. mesh.stream_timeout, now stream_timeout_s) still load; each use is
    # logged as a warning naming where it came from, so the file can be brought up to date.
    with warnings.catch_warnings(record=True) as deprecated:
        warnings.simplefilter("always", DeprecationWarning)
        overrides, env_problems = _parse_env(env)
        problems.extend(env_problems)
        env_paths: dict[tuple[str, ...], str] = {}
        for var, (fpath, value) in overrides.items():
            clash = _deep_set(data, fpath, value)
            if clash is not None:
                problems.append(f"{var}: {'.'.join(fpath)}: cannot override, {label} sets "
                                f"{'.'.join(clash)} to a non-table value")
            else:
                env_paths[fpath] = var

        try:
            cfg = AgentConfig.model_validate(data)
        except ValidationError as exc:
            problems.extend(_format_validation(exc, label, env_paths))
            cfg = None
    for w in deprecated:
        if issubclass(w.category, DeprecationWarning):
            text = str(w.message)
            log.warning("%s", text if text.startswith(ENV_PREFIX) else f"{label}: {text}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return cfg


def env_overrides(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The ``AVI_*`` variables that :func:`load_config` would apply (for logging at start-up,
    so a value set by the unit's ``Environment=`` is not mistaken for the file's)."""
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and ENV_SEPARATOR in k}


def _toml_error(label: str, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        what = msg[: m.start()].strip()
        return f"{label}:{m.group(1)}:{m.group(2)}: TOML syntax error: {what}"
    return f"{label}: TOML syntax error: {msg}"


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _parse_env(env: Mapping[str, str]) -> tuple[dict[str, tuple[tuple[str, ...], Any]], list[str]]:
    """Map ``AVI_A__B__C=value`` to (("a","b","c"), converted value); unknown names are problems."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    problems: list[str] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        raw = env[var]
        rest = var[len(ENV_PREFIX):].lower()
        if ENV_SEPARATOR not in rest:
            # Every setting is inside a table, so an override always has a '__'. Other AVI_*
            # names belong to tooling (e.g. AVI_EXTRAS in scripts/bootstrap.sh) unless they
            # look like a setting with the separator mistyped.
            section = next((s for s in AgentConfig.model_fields
                            if rest == s or rest.startswith(s + "_")), None)
            if section is not None:
                problems.append(f"{var}: looks like a {section} setting but has no '{ENV_SEPARATOR}' "
                                f"(write AVI_{section.upper()}{ENV_SEPARATOR}<FIELD>, "
                                f"e.g. AVI_MESH__LISTEN_PORT)")
            continue
        parts = rest.split(ENV_SEPARATOR)
        model: Any = AgentConfig
        ann: Any = None
        fpath: list[str] = []
        for i, part in enumerate(parts):
            if not _is_model(model):
                problems.append(f"{var}: {'.'.join(fpath)} is not a table, so it has no field {part!r}")
                break
            fields = model.model_fields
            renamed = getattr(model, "renamed_fields", {})
            if part not in fields and part in renamed:
                warnings.warn(f"{var}: {'.'.join([*fpath, part])} is deprecated: it is now "
                              f"{'.'.join([*fpath, renamed[part]])} "
                              f"(write {ENV_PREFIX}{ENV_SEPARATOR.join([*fpath, renamed[part]]).upper()})",
                              DeprecationWarning, stacklevel=2)
                part = renamed[part]
            if part not in fields:
                where = ".".join(fpath) or "the top level"
                problems.append(f"{var}: unknown setting {'.'.join([*fpath, part])!r} "
                                f"(expected one of {', '.join(fields)} in {where}; "
                                f"nest with '{ENV_SEPARATOR}', e.g. AVI_MESH__LISTEN_PORT)")
                break
            fpath.append(part)
            ann = fields[part].annotation
            model = _unwrap_optional(ann)
        else:
            try:
                out[var] = (tuple(fpath), _convert_env(raw, ann))
            except ValueError as exc:
                problems.append(f"{var}: {'.'.join(fpath)}: {exc}")
    return out, problems


def _convert_env(raw: str, ann: Any) -> Any:
    """Strings stay strings for pydantic's lax coercion ("4001" -> int, "true" -> bool); lists
    accept JSON or comma-separated items; tables and lists of tables need JSON; empty = None for
    optional fields."""
    if raw.strip() == "" and _is_optional(ann):
        return None
    tp = _unwrap_optional(ann)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        if raw.lstrip().startswith("["):
            return _json(raw, "a JSON list")
        items = [s.strip() for s in raw.split(",")]
        return [s for s in items if s]
    if origin is dict or _is_model(tp):
        return _json(raw, "a JSON object")
    return raw


def _json(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected {what} ({exc})") from None


def _deep_set(data: dict[str, Any], fpath: tuple[str, ...], value: Any) -> tuple[str, ...] | None:
    """Set ``data[a][b][c] = value``; return the clashing prefix when a parent is not a table."""
    node = data
    for i, key in enumerate(fpath[:-1]):
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            return fpath[: i + 1]
        node = nxt
    node[fpath[-1]] = value
    return None


def _format_validation(exc: ValidationError, label: str,
                       env_paths: Mapping[tuple[str, ...], str]) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        fpath, dotted, parent = _clean_loc(err["loc"], err["type"])
        source = _source_for(fpath, label, env_paths)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            known = ", ".join(parent.model_fields) if _is_model(parent) else "?"
            lines.append(f"{source}: {dotted}: unknown key (expected one of: {known})")
            continue
        # A whole-table check gets the table as input: its message already names the fields.
        inp = err.get("input")
        got = "" if err["type"] == "missing" or isinstance(inp, dict) else f" (got {_short(inp)})"
        lines.append(f"{source}: {dotted or '(top level)'}: {msg}{got}")
    return lines


def _clean_loc(loc: tuple[Any, ...], etype: str) -> tuple[tuple[str, ...], str, Any]:
    """Drop pydantic's union/validator tags from ``loc``; return (field path, "a.b[0].c", model)."""
    model: Any = AgentConfig
    fpath: list[str] = []
    dotted = ""
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        tp = _unwrap_optional(model)
        if isinstance(part, int):
            dotted += f"[{part}]"
            args = typing.get_args(tp)
            model = args[0] if args else None
            continue
        if _is_model(tp):
            if part in tp.model_fields:
                fpath.append(part)
                dotted += ("." if dotted else "") + part
                model = tp.model_fields[part].annotation
                continue
            if last and etype == "extra_forbidden":
                fpath.append(part)
                dotted += ("." if dotted else "") + part
                return tuple(fpath), dotted, tp
        # a tag such as 'function-after[...]' or 'int' inside a union: not part of the path
    return tuple(fpath), dotted, None


def _source_for(fpath: tuple[str, ...], label: str, env_paths: Mapping[tuple[str, ...], str]) -> str:
    hits = [var for p, var in env_paths.items()
            if fpath[: len(p)] == p or p[: len(fpath)] == fpath]
    exact = [var for p, var in env_paths.items() if fpath[: len(p)] == p]
    if exact:
        return exact[-1]
    if hits:  # a whole-table check (e.g. audio rate vs frame_ms) involving an override
        return f"{label} + {', '.join(sorted(hits))}"
    return label


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Rendering (for `avi-agent check-config`): a small TOML emitter for plain data.

def render_toml(cfg: AgentConfig) -> str:
    """The effective config as TOML that :func:`load_config` reads back to an equal model.

    ``None`` values are written as comments (TOML has no null)."""
    return to_toml(cfg.model_dump(mode="json"))


def to_toml(data: Mapping[str, Any]) -> str:
    """Emit a TOML document for dicts of str/int/float/bool/list/dict (``None`` becomes a comment)."""
    out: list[str] = []
    _emit_table(data, (), out, header=False)
    return "\n".join(out).strip("\n") + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _emit_table(table: Mapping[str, Any], prefix: tuple[str, ...], out: list[str], header: bool,
                array: bool = False) -> None:
    if header:
        name = ".".join(_key(k) for k in prefix)
        out.append("")
        out.append(f"[[{name}]]" if array else f"[{name}]")
    subtables = []
    for k, v in table.items():
        if not isinstance(k, str):
            raise TypeError(f"TOML keys must be strings, not {type(k).__name__} ({k!r})")
        if isinstance(v, Mapping) or _is_table_array(v):
            subtables.append((k, v))
        elif v is None:
            out.append(f"# {_key(k)} = (not set)")
        else:
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in subtables:
        if isinstance(v, Mapping):
            _emit_table(v, (*prefix, k), out, header=True)
        else:
            for item in v:
                _emit_table(item, (*prefix, k), out, header=True, array=True)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(s: str) -> str:
    parts = []
    for ch in s:
        if ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise TypeError("TOML arrays cannot hold None")
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        if any(x is None for x in v.values()):
            raise TypeError("TOML inline tables cannot hold None")
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML: {v!r}")
