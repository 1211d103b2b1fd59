"""Registries: every swappable part is selected by name in a recipe.

A part is one file plus one ``@REGISTRY.register("name")`` line. Recipes name a part and give its
arguments as a plain mapping, e.g. ``rnn: {name: rwkv6, n_layer: 2, d_model: 128}``.

A registry fills itself on first use: looking a name up imports its ``home`` package (e.g.
``aurora.components.rnn``), whose ``__init__`` imports every part of that kind. So ``RNN.build(...)`` works from
Python without importing the parts first, and no module needs an ``import aurora.components`` line for its side
effect.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Mapping, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> constructor table for one kind of part, with helpful errors."""

    def __init__(self, kind: str, plural: str | None = None, home: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self.home = home  # the package whose import registers every entry (None: entries register themselves)
        self._entries: dict[str, Callable[..., T]] = {}
        self._filled = home is None

    def _fill(self) -> None:
        """Import the home package once, on the first lookup (the flag is set first: the package's own modules
        may look names up while it is being imported)."""
        if not self._filled:
            self._filled = True
            importlib.import_module(self.home)

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        self._fill()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._fill()
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        self._fill()
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
        factory = self.get(name)
        what = f"{self.kind} {name!r}"
        check_arguments(what, factory, kwargs)
        try:
            return factory(**kwargs, **extra)
        except (ArithmeticError, RuntimeError) as e:  # head_size 0, a negative dimension: a recipe error, named
            raise ValueError(f"{what} cannot be built from {dict(kwargs)}: {type(e).__name__}: {e}") from e


_SCALARS = {"int": int, "float": (int, float), "bool": bool, "str": str}


def check_arguments(what: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """A recipe value of the wrong type for an argument annotated ``int``, ``float``, ``bool`` or ``str`` is a
    TypeError naming the argument, the expected type and the value (``d_model: abc``), instead of a failure deep
    inside a layer's constructor. Other annotations (unions, containers) are left to the factory."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    for key, value in kwargs.items():
        p = params.get(key)
        if p is None or value is None:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", None)
        want = _SCALARS.get(ann) if isinstance(ann, str) else None
        if want is None:
            continue
        if (isinstance(value, bool) and ann != "bool") or not isinstance(value, want):
            raise TypeError(f"{what}: argument {key!r} must be {ann}, got {type(value).__name__} {value!r}")


VISION: Registry = Registry("vision backbone", home="aurora.components.vision")
MERGE: Registry = Registry("merge strategy", "merge strategies", home="aurora.components.merge")
ORDER: Registry = Registry("token ordering", home="aurora.components.merge")
PROJECTOR: Registry = Registry("projector", home="aurora.components.projector")
RNN: Registry = Registry("rnn backbone", home="aurora.components.rnn")
