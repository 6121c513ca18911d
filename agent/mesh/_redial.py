"""When to dial a peer we know but are not connected to: a sans-I/O policy with explicit time.

A peer that departs is redialled with exponential back-off (``first_s``, doubling, at most
``max_s`` apart) and forgotten once it has been missing for ``forget_after_s``, so a node does
not dial, and log, departed peers for ever. Permanent peers (the configured bootstrap peers)
are never forgotten; their back-off is capped the same way. A forgotten peer that is found
again (mDNS, the DHT) starts afresh. A peer that was never dialled (bounded degree did not need
it) is not forgotten: forgetting is for peers that fail to answer.

The node tells the policy what happened (:meth:`missing`, :meth:`connected`,
:meth:`attempted`) and asks it what to do (:meth:`due`, :meth:`expired`, :meth:`next_at`);
every call takes ``now`` (any monotonic clock: the node uses ``trio.current_time()``), so the
policy is tested without waiting and without a network. Bounded: at most ``max_tracked``
peers (the longest-missing non-permanent one is dropped first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RedialPolicy"]


@dataclass(slots=True)
class _Missing:
    since: float  # when it went missing (or was first heard of)
    next_at: float  # earliest time of the next dial
    attempts: int  # dials since it went missing
    permanent: bool


class RedialPolicy:
    """Back-off and forgetting for missing peers. Peer ids are opaque strings."""

    def __init__(self, *, first_s: float = 1.0, max_s: float = 30.0, forget_after_s: float = 300.0,
                 jitter: float = 0.1, max_tracked: int = 1024, rng: random.Random | None = None) -> None:
        if not (0 < first_s <= max_s):
            raise ValueError(f"need 0 < first_s ({first_s}) <= max_s ({max_s})")
        if forget_after_s < max_s:
            raise ValueError(f"forget_after_s ({forget_after_s}) must be at least max_s ({max_s})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {jitter}")
        self.first_s = first_s
        self.max_s = max_s
        self.forget_after_s = forget_after_s
        self.jitter = jitter
        self.max_tracked = max(1, max_tracked)
        self._rng = rng or random.Random()
        self._missing: dict[str, _Missing] = {}
        self._permanent: set[str] = set()
        self.forgotten = 0  # peers given up on so far (a counter for stats)

    # --- what happened ------------------------------------------------------------------------
    def add_permanent(self, peer: str, now: float) -> None:
        """A peer never to forget (a configured bootstrap peer); dialled at once when missing."""
        self._permanent.add(peer)
        entry = self._missing.get(peer)
        if entry is not None:
            entry.permanent = True

    def missing(self, peer: str, now: float, *, departed: bool = False) -> None:
        """``peer`` is known and not connected. First call: due at once (a newly found peer), or
        after ``first_s`` when ``departed`` (it just disconnected: give it a moment). Later calls
        change nothing, so repeated announcements of a dead peer do not reset its back-off."""
        if peer in self._missing:
            return
        self._missing[peer] = _Missing(since=now, next_at=now + (self.first_s if departed else 0.0),
                                       attempts=0, permanent=peer in self._permanent)
        while len(self._missing) > self.max_tracked:
            victims = [p for p, e in self._missing.items() if not e.permanent] or list(self._missing)
            del self._missing[min(victims, key=lambda p: self._missing[p].since)]

    def connected(self, peer: str) -> None:
        """``peer`` is connected: nothing to dial (its back-off starts over next time)."""
        self._missing.pop(peer, None)

    def attempted(self, peer: str, now: float) -> None:
        """A dial of ``peer`` started: the next one waits ``first_s * 2**attempts`` (at most
        ``max_s``), with +-``jitter`` so a fleet that lost the same peer does not dial in step."""
        entry = self._missing.get(peer)
        if entry is None:
            return
        delay = min(self.max_s, self.first_s * (2.0 ** entry.attempts))
        if self.jitter:
            delay *= 1.0 + self._rng.uniform(-self.jitter, self.jitter)
        entry.attempts += 1
        entry.next_at = now + delay

    def forget(self, peer: str) -> None:
        self._missing.pop(peer, None)

    # --- what to do ---------------------------------------------------------------------------
    def due(self, now: float) -> list[str]:
        """Missing peers whose next dial time has come (longest-missing first)."""
        ready = [(e.since, p) for p, e in self._missing.items() if e.next_at <= now]
        return [p for _, p in sorted(ready)]

    def expired(self, now: float) -> list[str]:
        """Non-permanent peers missing for ``forget_after_s`` or longer and dialled at least once
        since (a peer never tried, e.g. one a node of bounded degree did not need, is not
        forgotten): removed from the policy and returned, for the caller to forget too."""
        gone = [p for p, e in self._missing.items()
                if not e.permanent and e.attempts and now - e.since >= self.forget_after_s]
        for p in gone:
            del self._missing[p]
        self.forgotten += len(gone)
        return gone

    def next_at(self) -> float | None:
        """The earliest time something is due (a dial or a forget), None when nothing is missing."""
        times = [e.next_at for e in self._missing.values()]
        times += [e.since + self.forget_after_s for e in self._missing.values() if not e.permanent and e.attempts]
        return min(times, default=None)

    def attempts(self, peer: str) -> int:
        entry = self._missing.get(peer)
        return 0 if entry is None else entry.attempts

    def __contains__(self, peer: object) -> bool:
        return peer in self._missing

    def __len__(self) -> int:
        return len(self._missing)
