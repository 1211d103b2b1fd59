"""``aurora bench vision``: ViT frames/s and visual tokens per frame against the merge's keep ratio, side by side
with no merging.

One vision encoder (``--encoder``, a name of the ``VISION`` registry: ``siglip`` or ``clip``) of one size (random
weights: ``--hidden-size --layers --heads --mlp --image-size --patch-size``; the default is a small CPU-friendly
ViT-Ti/16 at 224 px, 196 patches) is built once per merge of ``--merges`` from the same seed, so every merge runs
on the same weights. A merge is written ``NAME[:ARG[:ARG]]`` with ``key=value`` arguments allowed anywhere after
the name; the positional arguments are

* ``none`` — no merging (always measured: the baseline every speed-up is taken against);
* ``tome:KEEP_RATIO[:SCHEDULE]`` — ToMe inside every layer (schedule: constant, front, back, exact);
* ``tome_post:KEEP_RATIO`` — ToMe rounds on the encoder's output;
* ``pool:STRIDE[:KERNEL]`` — average pooling of the output patch grid;
* ``temporal:KEEP_RATIO[:WINDOW]`` — merging across neighbouring frames after a per-frame merge given as
  ``inner=NAME/ARG/ARG`` (the same form with ``/`` for ``:``; default ``tome`` without merging), e.g.
  ``temporal:0.5:inner=tome/0.25``; the benchmark's frames are one video;

and any other registered merge takes ``key=value`` arguments only. ``--order`` is given to every merge that takes
an ordering (``tome``, ``tome_post``) unless its spec names one.

Every record has the encoder's dimensions, the merge spec, the tokens per frame the encoder announces
(``encoder.tokens_per_frame(H, W)``, checked equal to the token count it actually outputs: a difference stops the
benchmark), ``visual_tokens_per_frame``: what the language model reads per frame after the merge's video step
(the same for per-frame merges, the video's token budget / frames for ``temporal``), the achieved keep ratio (tokens out / tokens in), and frames/s: ``--frames`` frames (random pixels)
per forward under ``torch.inference_mode()``, ``--warmup`` untimed forwards, then ``--repeat`` timed rounds; a
round times one forward of every merge in turn (interleaved, so that load changes on a shared machine hit all
merges alike), and the median of each merge's rounds is kept. On CUDA every timing is bracketed by
``torch.cuda.synchronize`` and each merge is measured in float32 and again under bf16 autocast
(``torch.autocast("cuda", dtype=torch.bfloat16)``); speed-ups are against ``none`` in the same precision.

The keep ratio of a record is the one the merge asks for (``none``: 1, ``pool``: 1 / stride^2, the share of
patches non-overlapping windows leave); ``achieved_keep`` is tokens out / tokens in.

Output: a table on stdout, ``--json PATH`` (the records) and ``--plot PATH.png`` (frames/s and tokens per frame
against the keep ratio asked for), both written to a temporary name and moved into place.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aurora.tools.measure import write_outputs
from aurora.io import pyplot, save_figure

# positional arguments of the merges' ``NAME:ARG:ARG`` form
POSITIONAL = {"none": (), "tome": ("keep_ratio", "schedule"), "tome_post": ("keep_ratio",), "pool": ("stride", "kernel"),
              "temporal": ("keep_ratio", "window")}
DEFAULT_MERGES = "none,tome:0.5,tome:0.25,tome:0.1,tome_post:0.1,pool:2"


def _registries():
    from aurora.registry import MERGE, ORDER, VISION

    return VISION, MERGE, ORDER


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_merge(text: str, order: str | None = None) -> tuple[str, dict[str, Any]]:
    """``"tome:0.1:exact"`` -> ``("tome:0.1:exact", {"name": "tome", "keep_ratio": 0.1, "schedule": "exact",
    "order": order})``. The merge is built once here, so an unknown name (the message lists the known ones), a
    wrong argument or a bad value fails before anything is measured."""
    _, MERGE, ORDER = _registries()
    label = text.strip()
    name, *args = label.split(":")
    try:
        cls = MERGE.get(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    spec: dict[str, Any] = {"name": name}
    names = POSITIONAL.get(name, ())
    positional = [a for a in args if "=" not in a]
    if len(positional) > len(names):
        takes = f"positional arguments {', '.join(names)}" if names else "no positional arguments (key=value only)"
        raise ValueError(f"merge {label!r}: {name} takes {takes}, got {len(positional)} positional")
    spec.update(zip(names, map(_value, positional)))
    for a in args:
        if "=" in a:
            key, val = a.split("=", 1)
            spec[key.strip()] = _value(val.strip())
    if isinstance(spec.get("inner"), str):  # temporal's per-frame merge: inner=tome/0.25 -> a nested spec
        spec["inner"] = parse_merge(spec["inner"].replace("/", ":"), order)[1]
    params = inspect.signature(cls).parameters
    if order is not None and "order" in params and "order" not in spec:
        spec["order"] = order
    if "order" in spec:
        try:
            ORDER.get(spec["order"])
        except KeyError as e:
            raise ValueError(f"merge {label!r}: {e.args[0]}") from None
    try:
        MERGE.build(spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"merge {label!r}: {e}") from None
    return label, spec


def _merges(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("--merges is empty")
    for item in items:  # the names are checked here, the arguments again once --order is known
        try:
            parse_merge(item)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return items


def _encoder_name(text: str) -> str:
    VISION, _, _ = _registries()
    try:
        VISION.get(text)
    except KeyError as e:
        raise argparse.ArgumentTypeError(e.args[0]) from None
    return text


def nominal_keep(spec: dict[str, Any]) -> float | None:
    """The keep ratio a merge asks for: 1 for ``none``, ``keep_ratio`` for ToMe, 1 / stride^2 for ``pool``
    (the share of patches left by non-overlapping windows); None for a merge that names none."""
    if spec["name"] == "none":
        return 1.0
    if spec["name"] == "pool":
        return 1.0 / spec.get("stride", 2) ** 2
    value = spec.get("keep_ratio")
    return None if value is None else float(value)


# ------------------------------------------------------------------------------------------------ measuring


def run_bench(args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
    import torch

    VISION, _, _ = _registries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("aurora bench vision: --device cuda but torch sees no CUDA device")
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    precisions = ["float32", "bf16_autocast"] if cuda else ["float32"]

    labels = list(args.merges)
    if "none" not in labels:
        labels.insert(0, "none")
        log("[bench vision] 'none' added to --merges: the baseline of the speed-ups")
    specs = [parse_merge(label, args.order) for label in labels]
    size = dict(hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                intermediate_size=args.mlp, image_size=args.image_size, patch_size=args.patch_size)
    encoders = []
    for label, spec in specs:
        torch.manual_seed(args.seed)  # the same weights for every merge
        enc = VISION.build({"name": args.encoder, **size, "feature_layer": args.feature_layer, "merge": spec})
        encoders.append(enc.to(dev).eval())
    h = w = args.image_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    pixels = torch.randn(args.frames, 3, h, w, generator=gen).to(dev)
    device_name = torch.cuda.get_device_name(dev) if cuda else (platform.processor() or platform.machine())
    enc0 = encoders[0]
    tokens_in = enc0.num_tokens(h, w)
    common = dict(
        encoder=args.encoder, hidden_size=args.hidden_size, layers=args.layers, layers_run=len(enc0.layers),
        heads=args.heads, mlp=args.mlp, image_size=args.image_size, patch_size=args.patch_size,
        patches=enc0.num_patches(h, w), tokens_in=tokens_in, feature_layer=args.feature_layer,
        n_params=sum(p.numel() for p in enc0.parameters()), frames=args.frames, warmup=args.warmup,
        repeat=args.repeat, device=device, device_name=device_name, torch=torch.__version__,
        threads=torch.get_num_threads(), inference_mode=True, seed=args.seed,
    )

    records = []
    for precision in precisions:
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16_autocast" else None

        def forward(enc, video_step=True):
            """The encoder on the frames, then the merge's video step (all frames are one video)."""
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = enc(pixels)
                return enc.merge.video(out, args.frames) if video_step else out

        times: list[list[float]] = [[] for _ in encoders]
        outputs = []
        with torch.inference_mode():
            for (label, _), enc in zip(specs, encoders):  # warm-up, and the token counts checked
                out = None
                for _ in range(max(1, args.warmup)):
                    out = forward(enc, video_step=False)
                sync()
                video = enc.merge.video(out, args.frames)
                read_per_frame = video.tokens.shape[0] * video.tokens.shape[1] / args.frames
                predicted, actual = enc.tokens_per_frame(h, w), out.tokens.shape[1]
                if actual != predicted:
                    raise RuntimeError(f"merge {label!r}: encoder.tokens_per_frame({h}, {w}) = {predicted} but the "
                                       f"encoder output {actual} tokens per frame")
                sizes_sum = out.sizes.float().sum(dim=1)  # every frame's sizes add up to the tokens that went in
                if not torch.allclose(sizes_sum, torch.full_like(sizes_sum, tokens_in), rtol=1e-4):
                    raise RuntimeError(f"merge {label!r}: token sizes sum to {sizes_sum.tolist()}, not {tokens_in}")
                outputs.append((predicted, actual, tuple(out.tokens.shape), str(out.tokens.dtype), read_per_frame))
                del out, video
            for _ in range(args.repeat):
                for i, enc in enumerate(encoders):
                    sync()
                    t0 = time.perf_counter()
                    out = forward(enc)
                    sync()
                    times[i].append(time.perf_counter() - t0)
                    del out
        base = None
        for (label, spec), enc, ts, (predicted, actual, shape, out_dtype, read) in zip(specs, encoders, times, outputs):
            med = statistics.median(ts)
            fps = args.frames / med
            if label == "none":
                base = fps
            keep = nominal_keep(spec)
            rec = dict(common, merge=label, merge_name=spec["name"], merge_spec=spec, keep_ratio=keep,
                       tokens_per_frame=predicted, output_tokens=actual, tokens_match=predicted == actual,
                       visual_tokens_per_frame=read,
                       achieved_keep=predicted / tokens_in, output_shape=list(shape), output_dtype=out_dtype,
                       precision=precision, seconds=ts, median_s=med, frames_per_s=fps,
                       visual_tokens_per_s=fps * read)
            records.append(rec)
            log(f"[bench vision] {precision} {label}: {predicted} tokens/frame, {fps:,.1f} frames/s")
        for rec in records:
            if rec["precision"] == precision:
                rec["speedup_vs_none"] = rec["frames_per_s"] / base
    return records


# ------------------------------------------------------------------------------------------------ output


def format_table(records: list[dict[str, Any]]) -> str:
    head = ["merge", "precision", "keep ratio", "achieved keep", "tokens/frame", "LM tokens/frame", "frames/s",
            "visual tok/s", "speed-up vs none", "median ms / batch"]
    rows = [[r["merge"], r["precision"], "-" if r["keep_ratio"] is None else f"{r['keep_ratio']:g}",
             f"{r['achieved_keep']:.3f}", f"{r['tokens_per_frame']}", f"{r['visual_tokens_per_frame']:g}",
             f"{r['frames_per_s']:,.1f}",
             f"{r['visual_tokens_per_s']:,.0f}", f"{r['speedup_vs_none']:.2f}x", f"{1000 * r['median_s']:.1f}"]
            for r in records]
    width = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, width)))
             for row in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_plot(records: list[dict[str, Any]], path: str | Path) -> None:
    """Frames/s (log) and tokens per frame against the requested keep ratio (log), one colour per merge family,
    ``none`` a black star with a dotted line at its level; the tokens panel also shows keep ratio x tokens in
    (grey dashes), so the distance of a point from it is what the merge's rounding and clamping made of the ratio.
    Records without a keep ratio are left out of the plot."""
    plt = pyplot("aurora bench vision")
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, FuncFormatter, LogLocator, NullFormatter

    fig, (ax_f, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shown = [r for r in records if r["keep_ratio"] is not None]
    families = [n for n in dict.fromkeys(r["merge_name"] for r in shown) if n != "none"]
    styles = {"float32": "-", "bf16_autocast": "--"}
    for precision in dict.fromkeys(r["precision"] for r in shown):
        rs = [r for r in shown if r["precision"] == precision]
        none = next((r for r in rs if r["merge_name"] == "none"), None)
        suffix = "" if precision == "float32" else f" ({precision})"
        for ax, key in ((ax_f, "frames_per_s"), (ax_t, "tokens_per_frame")):
            if none is not None:
                ax.axhline(none[key], color="black", ls=":", lw=1)
                ax.plot([1.0], [none[key]], "*", color="black", ms=11, label=f"none{suffix}")
            for i, fam in enumerate(families):
                pts = sorted((r["keep_ratio"], r[key], r["merge"]) for r in rs if r["merge_name"] == fam)
                if not pts:
                    continue
                xs, ys, names = zip(*pts)
                ax.plot(xs, ys, styles.get(precision, "-."), marker="o", color=colours[i % len(colours)],
                        label=f"{fam}{suffix}")
                for x, y, name in zip(xs, ys, names):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 - 10 * (i % 3)), fontsize=7)
    if shown:
        lo = min(r["keep_ratio"] for r in shown)
        xs = [lo * 0.9, 1.0]
        ax_t.plot(xs, [x * shown[0]["tokens_in"] for x in xs], "--", color="grey", lw=1,
                  label="keep ratio x tokens in")
    r0 = records[0] if records else {}
    where = (f"{r0.get('encoder')} hidden {r0.get('hidden_size')}, {r0.get('layers_run')}/{r0.get('layers')} layers, "
             f"{r0.get('image_size')} px / {r0.get('patch_size')}; {r0.get('device')}, {r0.get('threads')} thread(s), "
             f"{r0.get('frames')} frames per forward")
    for ax, title, ylabel in ((ax_f, "throughput", "frames / s"), (ax_t, "visual tokens per frame", "tokens / frame")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([0.05, 0.1, 0.25, 0.5, 1.0])
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("keep ratio asked for (pool: 1 / stride²)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n({where})", fontsize=9)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_f.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 1.5, 2, 3, 5, 7)))
    ax_f.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    ticks: list[int] = []
    for v in sorted({r["tokens_per_frame"] for r in shown}, reverse=True):  # the counts, none closer than 10 %
        if not ticks or v < ticks[-1] / 1.1:
            ticks.append(v)
    ax_t.yaxis.set_major_locator(FixedLocator(ticks))
    ax_t.yaxis.set_major_formatter(FormatStrFormatter("%d"))
    fig.tight_layout()
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aurora bench vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=_encoder_name, default="siglip", help="a VISION registry name: siglip, clip")
    p.add_argument("--hidden-size", type=int, default=192, help="the ViT's width (default: %(default)s)")
    p.add_argument("--layers", type=int, default=6, help="encoder layers (--feature-layer decides how many run)")
    p.add_argument("--heads", type=int, default=3, help="the ViT's attention heads (default: %(default)s)")
    p.add_argument("--mlp", type=int, default=768, help="MLP (intermediate) width")
    p.add_argument("--image-size", type=int, default=224, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--patch-size", type=int, default=16, help="ViT patch side in pixels (default: %(default)s)")
    p.add_argument("--feature-layer", type=int, default=-2,
                   help="hidden_states index of the features (-2: the last layer dropped, as the paper)")
    p.add_argument("--merges", type=_merges, default=_merges(DEFAULT_MERGES),
                   help=f"comma-separated merge specs NAME[:ARG...] (default: {DEFAULT_MERGES})")
    p.add_argument("--order", default="size_ascending", help="token ordering of the merges that take one")
    p.add_argument("--frames", type=int, default=16, help="frames per forward")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards of each merge first")
    p.add_argument("--repeat", type=int, default=5, help="timed forwards of each merge (the median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (the same for every merge) and pixels")
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    return p


def bench_vision_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.hidden_size, args.layers, args.heads, args.mlp, args.image_size, args.patch_size, args.frames,
           args.repeat) < 1 or args.warmup < 0:
        parser.error("--hidden-size, --layers, --heads, --mlp, --image-size, --patch-size, --frames and --repeat "
                     "must be >= 1, --warmup >= 0")
    if args.hidden_size % args.heads:
        parser.error(f"--hidden-size {args.hidden_size} is not divisible by --heads {args.heads}")
    if args.patch_size > args.image_size:
        parser.error(f"--patch-size {args.patch_size} is larger than --image-size {args.image_size}")
    try:
        from aurora.components.vision.base import resolve_feature_layer

        resolve_feature_layer(args.feature_layer, args.layers)
        _, _, ORDER = _registries()
        try:
            ORDER.get(args.order)
        except KeyError as e:
            raise ValueError(f"--order: {e.args[0]}") from None
        for label in args.merges:
            parse_merge(label, args.order)
    except ValueError as e:
        parser.error(str(e))
    records = run_bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    r0 = records[0]
    print(f"{r0['encoder']}: hidden {r0['hidden_size']}, {r0['layers_run']} of {r0['layers']} layers run "
          f"(feature layer {r0['feature_layer']}), {r0['heads']} heads, MLP {r0['mlp']}, {r0['image_size']} px, "
          f"patch {r0['patch_size']} -> {r0['tokens_in']} tokens in; {r0['frames']} frames per forward, median of "
          f"{r0['repeat']}; device {r0['device']} ({r0['device_name']}), torch {r0['torch']}, "
          f"{r0['threads']} thread(s), order {args.order}")
    print(format_table(records))
    write_outputs(args, records, records, write_plot)
    return 0


if __name__ == "__main__":
    sys.exit(bench_vision_main(sys.argv[1:]))
