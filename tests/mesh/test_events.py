"""The event types: one field name for a peer, whatever the event."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import agent.mesh as mesh
from agent.mesh import _events as events


def test_every_peer_field_is_named_peer_id() -> None:
    """A peer is `peer_id` in every event (whether it sent, accepted, closed or connected), so
    one `case X(peer_id=p)` pattern reads the same across events. `Started` names our own id."""
    kinds = typing.get_args(events.Event)
    assert len(kinds) == 9
    seen = 0
    for kind in kinds:
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            if hints[field.name] is events.PeerId:
                expected = "local_peer_id" if kind is events.Started else "peer_id"
                assert field.name == expected, (kind.__name__, field.name)
                seen += 1
    assert seen == len(kinds)  # every event names exactly one peer


def test_events_are_exported_and_frozen() -> None:
    for kind in typing.get_args(events.Event):
        assert getattr(mesh, kind.__name__) is kind
        assert kind.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_first_api_name_from_peer_still_matches_with_a_warning() -> None:
    """Message, AudioStreamRequested and AudioData said `from_peer` before; a pattern written
    that way (shared/design.md's example) still matches, with a DeprecationWarning."""
    peer = events.PeerId("12D3KooWexample")
    for event in (events.Message(peer, "t", b"x"),
                  events.AudioStreamRequested(peer, events.StreamId(1)),
                  events.AudioData(peer, events.StreamId(1), b"x")):
        with pytest.warns(DeprecationWarning, match="use peer_id"):
            match event:
                case (events.Message(from_peer=p) | events.AudioStreamRequested(from_peer=p)
                      | events.AudioData(from_peer=p)):
                    assert p == peer
                case _:
                    raise AssertionError(f"{event!r} did not match its from_peer pattern")
    assert not hasattr(events.PeerConnected(peer, "a"), "from_peer")
