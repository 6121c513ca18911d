"""AviP2pConfig: time fields carry their unit; the old names still work, with a DeprecationWarning."""

from __future__ import annotations

import warnings

import pytest
from pydantic import ValidationError

from agent.mesh import AviP2pConfig
from agent.mesh._audio_protocol import KEEPALIVE_INTERVAL, STREAM_TIMEOUT

RENAMED_FIELDS = AviP2pConfig.renamed_fields


def test_every_time_field_says_seconds_and_old_names_map_onto_fields() -> None:
    fields = AviP2pConfig.model_fields
    assert set(RENAMED_FIELDS.values()) <= set(fields)
    assert not set(RENAMED_FIELDS) & set(fields)
    floats = {name for name, f in fields.items() if f.annotation in (float, "float")}
    assert floats and all(name.endswith("_s") for name in floats), floats


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_FIELDS.items()))
def test_old_name_is_accepted_with_a_deprecation_warning(old: str, new: str) -> None:
    value = AviP2pConfig.model_fields[new].default * 2
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated: it is now mesh\.{new}"):
        cfg = AviP2pConfig(**{old: value})
    assert getattr(cfg, new) == value
    assert old not in cfg.model_dump()


def test_new_names_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = AviP2pConfig(stream_timeout_s=6.0, keepalive_interval_s=2.0)
    assert (cfg.stream_timeout_s, cfg.keepalive_interval_s) == (6.0, 2.0)


def test_old_and_new_name_together_is_refused() -> None:
    with pytest.raises(ValidationError, match="request_timeout is the old name of request_timeout_s"):
        AviP2pConfig(request_timeout=1.0, request_timeout_s=2.0)


def test_old_names_are_range_checked_like_the_new_ones() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError, match="stream_timeout_s"):
        AviP2pConfig(stream_timeout=0.01)


def test_liveness_defaults_are_the_protocols() -> None:
    cfg = AviP2pConfig()
    assert (cfg.keepalive_interval_s, cfg.stream_timeout_s) == (KEEPALIVE_INTERVAL, STREAM_TIMEOUT)


def test_local_only_keeps_to_this_machine_and_takes_overrides() -> None:
    cfg = AviP2pConfig.local_only()
    assert (cfg.listen_host, cfg.enable_mdns, cfg.enable_kad) == ("127.0.0.1", False, False)
    assert cfg.model_dump(exclude={"listen_host", "enable_mdns", "enable_kad"}) == \
        AviP2pConfig().model_dump(exclude={"listen_host", "enable_mdns", "enable_kad"})
    kad = AviP2pConfig.local_only(enable_kad=True, node_name="x")
    assert (kad.enable_kad, kad.node_name, kad.enable_mdns) == (True, "x", False)
    with pytest.raises(ValidationError, match="max_peers"):
        AviP2pConfig.local_only(max_peers=0)
