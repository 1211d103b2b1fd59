"""``aurora parts [KIND [NAME]]``: every registered part a recipe can name, with its arguments and defaults.

``fit --help`` shows ``--model.vision`` / ``--model.rnn`` as ``dict[str, Any]`` (a part is a ``{name: ...,
**arguments}`` mapping, so LightningCLI cannot know its fields); this is where a user discovers the backbones,
merges, orderings, projectors, tokenizers and benchmarks, and what each takes.

    aurora parts                 every kind, one line per part
    aurora parts rnn             the rnn backbones, each with its arguments and defaults
    aurora parts rnn mamba       one part: its arguments, defaults and docstring
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import sys

from aurora.registry import PARTS, REQUIRED, Registry, plain


def registries() -> dict[str, Registry]:
    """The recipe key -> registry table (the parts of aurora.registry, and the benchmarks ``aurora eval`` reads)."""
    from aurora.data.benchmarks import BENCHMARKS

    return {**PARTS, "benchmark": BENCHMARKS}


def _pick(word: str, choices: list[str], what: str) -> str:
    if word in choices:
        return word
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    print(f"aurora parts: error: unknown {what} {word!r}{hint} (known: {', '.join(choices)})", file=sys.stderr)
    raise SystemExit(2)


def describe(reg: Registry, name: str, full: bool = False) -> str:
    """One part: ``name  summary`` then one line per argument (``name = default``, or ``name (required)``)."""
    lines = [f"  {name}: {reg.summary(name)}"]
    args = reg.arguments(name)
    if args is None:
        lines.append("      (takes any keyword arguments)")
    for a in args or []:
        default = "(required)" if a.default is REQUIRED else f"= {a.default!r}"
        kind = f"  [{a.annotation}]" if a.annotation and full else ""
        lines.append(f"      {a.name} {default}{kind}")
    if full:
        doc = inspect.getdoc(reg.get(name)) or ""
        rest = doc.strip().splitlines()[1:]
        if any(r.strip() for r in rest):
            lines += ["", *("    " + plain(r) for r in rest)]
    return "\n".join(lines)


def parts_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aurora parts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", help="which kind of part to list (vision, merge, order, projector, rnn, "
                   "tokenizer, benchmark); all kinds when omitted")
    p.add_argument("name", nargs="?", help="one part of that kind: its arguments, defaults and full docstring")
    args = p.parse_args(argv)
    regs = registries()
    if args.kind is None:
        for kind, reg in regs.items():
            where = {"benchmark": "aurora eval --benchmark", "order": "recipe key model.merge.order",
                     "tokenizer": "recipe key data.tokenizer"}.get(
                kind, f"recipe key model.{kind}")
            print(f"{kind} ({reg.plural}; {where}; `aurora parts {kind}` for arguments):")
            for name in reg.names():
                print(f"  {name:<18}{reg.summary(name)}")
        return 0
    kind = _pick(args.kind, list(regs), "kind of part")
    reg = regs[kind]
    if args.name is None:
        print(f"{kind}: {', '.join(reg.names())}")
        for name in reg.names():
            print(describe(reg, name))
        return 0
    print(describe(reg, _pick(args.name, reg.names(), reg.kind), full=True))
    return 0


if __name__ == "__main__":
    sys.exit(parts_main(sys.argv[1:]))
