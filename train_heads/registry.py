"""One registry per kind of stage-two component (aggregators, decoders, generators, baselines).

A registry is filled by a decorator and builds by name:

    AGGREGATORS = Registry("aggregator")
    @AGGREGATORS.register("concat")
    class ConcatAggregator(nn.Module): ...
    AGGREGATORS.create("concat", dim=2048, num_input=2)

An unknown name raises `ValueError("unknown aggregator 'x'; available: [...]")`.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Registry:
    """Name -> constructor (class or function) for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a name can be registered once."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj  # type: ignore[assignment]
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {sorted(self._items)}")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component registered as `name` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
