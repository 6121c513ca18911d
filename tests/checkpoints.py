"""Every ``async def`` of a public API is a checkpoint, as in trio's own API: a caller can be
cancelled there and other tasks get to run, even when the call has nothing to wait for (a
call that returns at once without yielding lets a loop around it starve everything else and
ignore cancellation). The per-package tests (tests/hw, tests/mesh, tests/talk) call each
public async method through ``Checkpoints.check`` and then compare what they covered with
``public_async`` of the package, so a new public async method fails them until it is covered."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import trio.testing

DUNDERS = ("__aenter__", "__aexit__")


def _is_async(fn: object) -> bool:
    fn = inspect.unwrap(fn)  # type: ignore[arg-type]  # (e.g. an @asynccontextmanager)
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def public_async(*modules: ModuleType) -> set[str]:
    """``Class.method`` (and module-level ``function``) for every async callable reachable from
    the modules' ``__all__``; ``typing.Protocol`` classes are interfaces, not implementations."""
    out: set[str] = set()
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                if getattr(obj, "_is_protocol", False):
                    continue
                for attr in dir(obj):
                    if attr.startswith("_") and attr not in DUNDERS:
                        continue
                    if _is_async(getattr(obj, attr)):
                        out.add(f"{name}.{attr}")
            elif _is_async(obj):
                out.add(name)
    return out


class Checkpoints:
    """Collects which calls were checked and which of them did not checkpoint."""

    def __init__(self) -> None:
        self.covered: set[str] = set()
        self.missing: list[str] = []

    @contextmanager
    def check(self, name: str) -> Iterator[None]:
        """The block (one call of ``name``) must checkpoint: yield to the scheduler and check
        for cancellation (``trio.testing.assert_checkpoints``)."""
        self.covered.add(name)
        try:
            with trio.testing.assert_checkpoints():
                yield
        except AssertionError:
            self.missing.append(name)

    def verify(self, expected: set[str]) -> None:
        assert not self.missing, f"public async calls that are not checkpoints: {sorted(set(self.missing))}"
        assert self.covered == expected, (f"not covered: {sorted(expected - self.covered)}; "
                                          f"not public (stale name): {sorted(self.covered - expected)}")
