"""Registries: every swappable part is selected by name in a recipe.

A part is one file plus one ``@REGISTRY.register("name")`` line. Recipes name a part and give its
arguments as a plain mapping, e.g. ``rnn: {name: rwkv6, n_layer: 2, d_model: 128}``.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Mapping, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> constructor table for one kind of part, with helpful errors."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names()) or '(none)'}"
            ) from None

    def build(self, spec: str | Mapping[str, Any], **extra: Any) -> T:
        """Build from a name or a ``{name: ..., **kwargs}`` mapping; ``extra`` adds wiring arguments."""
        if isinstance(spec, str):
            name, kwargs = spec, {}
        else:
            kwargs = dict(spec)
            if "name" not in kwargs:
                raise KeyError(f"{self.kind} spec needs a 'name' (one of: {', '.join(self.names())}); got {spec!r}")
            name = kwargs.pop("name")
        return self.get(name)(**kwargs, **extra)


VISION: Registry = Registry("vision backbone")
MERGE: Registry = Registry("merge strategy", "merge strategies")
ORDER: Registry = Registry("token ordering")
PROJECTOR: Registry = Registry("projector")
RNN: Registry = Registry("rnn backbone")
