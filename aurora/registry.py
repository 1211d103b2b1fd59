"""Registries: every swappable part is selected by name in a recipe.

A part is one file plus one ``@REGISTRY.register("name")`` line. Recipes name a part and give its
arguments as a plain mapping, e.g. ``rnn: {name: rwkv6, n_layer: 2, d_model: 128}``.

A registry fills itself on first use: looking a name up imports its ``home`` package (e.g.
``aurora.components.rnn``), whose ``__init__`` imports every part of that kind. So ``RNN.build(...)`` works from
Python without importing the parts first, and no module needs an ``import aurora.components`` line for its side
effect.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any, Callable, Generic, Mapping, NamedTuple, TypeVar

T = TypeVar("T")
REQUIRED = inspect.Parameter.empty  # the default of an argument that has none


class PartArgumentError(TypeError):
    """A part built with an argument it does not take: the message names the part, the closest argument and every
    argument it takes (Python's own ``__init__() got an unexpected keyword argument`` says none of that)."""


class Argument(NamedTuple):
    name: str
    default: Any  # REQUIRED when the argument has none
    annotation: str


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have no signature
        return None


_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")  # :func:`x`, :class:`~a.B`, :ref:`t <x>`


def plain(text: str) -> str:
    """reST markup (``x``, :func:`x`, :class:`~a.B`) stripped for a terminal: help texts and ``aurora parts``
    are read as plain text, where the markup is noise."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def first_line(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, as plain text (empty when there is none)."""
    para = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        para.append(line.strip())
    text = plain(" ".join(para))
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


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

    def arguments(self, name: str) -> list[Argument] | None:
        """The arguments part ``name`` takes, with their defaults (None when it takes any keyword: ``**kwargs``)."""
        sig = _signature(self.get(name))
        if sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return [
            Argument(p.name, p.default, "" if p.annotation is p.empty else str(p.annotation).replace("typing.", ""))
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def summary(self, name: str) -> str:
        """The first line of the part's docstring (its class's for a class)."""
        return first_line(inspect.getdoc(self.get(name)))

    def check(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`PartArgumentError` for an argument that part ``name`` does not take, naming the closest
        one and every one it takes."""
        args = self.arguments(name)
        if args is None:
            return
        takes = [a.name for a in args]
        for key in kwargs:
            if key not in takes:
                close = difflib.get_close_matches(key, takes, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                obj = self.get(name)
                raise PartArgumentError(
                    f"{self.kind} {name!r} ({getattr(obj, '__qualname__', obj)}) takes no argument {key!r}{hint}; "
                    f"it takes: {', '.join(takes) or '(none)'}"
                )

    def build(self, spec: str | Mapping[str, Any], **extra: Any) -> T:
        """Build from a name or a ``{name: ..., **kwargs}`` mapping; ``extra`` adds wiring arguments. An argument
        the part does not take is a :class:`PartArgumentError` naming the part and the closest argument."""
        if isinstance(spec, str):
            name, kwargs = spec, {}
        else:
            kwargs = dict(spec)
            if "name" not in kwargs:
                raise KeyError(f"{self.kind} spec needs a 'name' (one of: {', '.join(self.names())}); got {spec!r}")
            name = kwargs.pop("name")
        factory = self.get(name)
        what = f"{self.kind} {name!r}"
        self.check(name, {**kwargs, **extra})  # a name the part does not take: the closest one, and all it takes
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
TOKENIZER: Registry = Registry("tokenizer", home="aurora.data.tokenizers")  # recipe key data.tokenizer
# every registry of parts a recipe names, by the recipe key that names it (``aurora parts`` lists them)
PARTS: dict[str, Registry] = {"vision": VISION, "merge": MERGE, "order": ORDER, "projector": PROJECTOR, "rnn": RNN,
                             "tokenizer": TOKENIZER}
