"""The event types: one field name for a peer, whatever the event."""

from __future__ import annotations

import dataclasses
import typing

import agent.mesh as mesh
from agent.mesh import events


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
