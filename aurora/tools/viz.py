"""``aurora viz``: pictures of what the model does.

    aurora viz merge --video V.mp4 --config recipes/demo.yaml [--ckpt last.ckpt] [--frames N] [--out merge.png]

``merge`` runs the recipe's vision encoder with its token merge (``model.vision`` + ``model.merge``) on frames
sampled uniformly from a video, with the datamodule's preprocessing, and draws every frame twice, side by side: the
frame as the encoder saw it, and the same frame with its merged tokens: each token's patches filled in one colour
(neighbouring tokens never share one: a greedy colouring of the tokens' adjacency over a qualitative palette),
labelled ``k:s`` where ``k`` is the token's place in the order the language model reads the frame's tokens (its row
in ``VisualTokens.tokens``) and ``s`` its size in patches.
Without ``--ckpt`` the encoder has random weights (seeded by the recipe's ``seed_everything``), so the merges show
an untrained encoder; ``--ckpt`` loads the ``model.vision.*`` weights of a Lightning checkpoint.
"""
from __future__ import annotations

import argparse
import colorsys
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from aurora.data.reader import FrameReader
from aurora.data.video import DEFAULT_MEAN, DEFAULT_STD, VideoDecodeError, to_pixels, uniform_indices
from aurora.infer.runconfig import RecipeError, load_recipe, section
from aurora.io import save_figure

CKPT_PREFIX = "model.vision."


class VizError(ValueError):
    """Input that ``aurora viz`` cannot use: a recipe without a vision part, a checkpoint that does not fit, ..."""


# ------------------------------------------------------------------------------------------------ inputs


def build_vision(recipe: Mapping[str, Any], ckpt: str | None = None) -> torch.nn.Module:
    """The recipe's vision encoder with its merge, tracing sources; weights from ``ckpt`` when given."""
    from aurora.registry import VISION

    model = section(recipe, "model")
    if "vision" not in model:
        raise VizError("recipe has no model.vision section (the vision encoder to visualise)")
    seed = recipe.get("seed_everything")
    with torch.random.fork_rng(devices=[]):  # random weights: the same picture every run; global RNG untouched
        torch.manual_seed(seed if isinstance(seed, int) else 0)
        vision = VISION.build(model["vision"], merge=model.get("merge"))
    vision.merge.trace_source = True  # the encoder then returns source maps (F, n, N)
    if ckpt is not None:
        load_vision_weights(vision, ckpt)
    return vision.eval()


def load_vision_weights(vision: torch.nn.Module, ckpt: str | os.PathLike) -> None:
    """Load the ``model.vision.*`` tensors of a Lightning checkpoint; every missing, unexpected or mis-shaped key is
    named in the error."""
    from aurora.checkpoint import CheckpointError, load_weights

    try:
        load_weights(vision, ckpt, CKPT_PREFIX, "the recipe's vision encoder")
    except CheckpointError as e:
        raise VizError(str(e)) from e


def decode_frames(video: str | os.PathLike, num_frames: int) -> tuple[Tensor, list[int], int]:
    """Decode ``video`` with the project's reader and sample ``num_frames`` uniformly, as the datamodule does.
    Returns uint8 frames (F, H, W, 3), the sampled frame indices and the video's frame count."""
    path = Path(video)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if not path.is_file():
        raise VizError(f"video path is not a file: {path}")
    try:  # keyframe seek: only the GOPs holding the sampled frames are decoded
        with FrameReader(path) as reader:
            idx = uniform_indices(len(reader), num_frames)
            return reader.read(idx), idx, len(reader)
    except VideoDecodeError as e:
        raise VideoDecodeError(f"{path}: {e}") from e


# ------------------------------------------------------------------------------------------------ the map


@dataclass
class MergeMap:
    """Which patches every merged token holds, per frame, in the language model's reading order."""

    images: Tensor  # (F, S, S, 3) float in [0, 1]: the frames as the encoder saw them (resized, cropped)
    sizes: Tensor  # (F, n) size of each token (patches, plus a class token); token k = row k of VisualTokens.tokens
    source: Tensor  # (F, n, P + N) token -> input token maps (P prefix/class tokens, then the N patches)
    assignment: Tensor  # (F, gh, gw) the token index holding each patch
    patch_size: int
    prefix: int = 0  # class tokens in front of the patches in the encoder's input
    shared: bool = False  # some patch is shared between tokens (overlapping pooling): shown in its largest share
    frame_indices: list[int] = field(default_factory=list)
    total_frames: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_frame(self) -> int:
        return self.sizes.shape[1]


def patch_assignment(source: Tensor, grid: tuple[int, int] | None = None, prefix: int = 0) -> Tensor:
    """Source maps (F, n, P + N) -> the token index of every patch (F, N), or (F, gh, gw) with ``grid``; the
    first ``prefix`` columns (class tokens) are not patches. Raises :class:`VizError` unless every patch belongs to
    exactly one token: its column is 0/1 with a single 1 (or, for shared patches, non-negative shares summing to 1:
    the patch then goes to its largest share)."""
    if source.dim() != 3:
        raise VizError(f"source maps must be (frames, tokens, inputs), got shape {tuple(source.shape)}")
    if not 0 <= prefix < source.shape[-1]:
        raise VizError(f"{prefix} prefix tokens leave no patches in source maps of {source.shape[-1]} inputs")
    patches = source[..., prefix:].to(torch.float64)
    if bool((patches < 0).any()):
        raise VizError("source maps must not be negative")
    cover = patches.sum(1)  # (F, N): how much of each patch the tokens hold together
    bad = (cover - 1).abs() > 1e-4
    if bool(bad.any()):
        f, p = bad.nonzero()[0].tolist()
        held = int((patches[f, :, p] > 0).sum())
        raise VizError(f"source maps must cover every patch exactly once; frame {f} patch {p} is held by {held} "
                       f"token(s) with total weight {float(cover[f, p]):g} ({int(bad.sum())} patches wrong in all)")
    out = patches.argmax(1)
    if grid is not None:
        gh, gw = grid
        if gh * gw != out.shape[1]:
            raise VizError(f"a {gh}x{gw} patch grid does not match {out.shape[1]} patches")
        out = out.view(-1, gh, gw)
    return out


def merge_settings(vision: torch.nn.Module, spec: Any, num_patches: int) -> dict[str, Any]:
    from aurora.registry import MERGE

    merge = vision.merge
    layers = len(vision.layers)
    name = next((n for n in MERGE.names() if MERGE.get(n) is type(merge)), type(merge).__name__)
    if spec is None or isinstance(spec, str):
        shown = f"{spec or 'none'}"
    else:
        args = {k: v for k, v in dict(spec).items() if k != "name"}
        shown = f"{spec.get('name', name)} (" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"
    n_in = num_patches + getattr(vision, "num_prefix_tokens", 0)
    return {
        "merge": name,
        "spec": shown,
        "keep_ratio": getattr(merge, "keep_ratio", None),
        "order": getattr(merge, "order_name", None),
        "schedule": merge.schedule(n_in, layers),
        "layers": layers,
        "patches": num_patches,
    }


@torch.no_grad()
def merge_map(vision: torch.nn.Module, pixels: Tensor, mean=DEFAULT_MEAN, std=DEFAULT_STD,
              spec: Any = None) -> MergeMap:
    """Run ``vision`` (its merge tracing sources) on ``pixels`` (F, 3, H, W) and map patches to tokens."""
    vt = vision(pixels)
    if vt.source is None:
        raise VizError(f"the merge {vision.merge!r} returned no source maps (it does not support trace_source)")
    p = vision.patch_size
    prefix = int(getattr(vision, "num_prefix_tokens", 0))
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    if vt.source.shape[-1] != prefix + grid[0] * grid[1]:
        raise VizError(f"source maps have {vt.source.shape[-1]} inputs; expected {prefix} prefix tokens + "
                       f"{grid[0]}x{grid[1]} patches")
    assignment = patch_assignment(vt.source, grid, prefix)
    counts = vt.source.sum(-1)
    if not torch.allclose(counts, vt.sizes.to(counts.dtype), atol=1e-4):
        raise VizError("token sizes disagree with their source maps")
    src = vt.source[..., prefix:]
    shared = bool(((src > 0) & (src < 1)).any())
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    images = (pixels * s + m).clamp(0, 1).permute(0, 2, 3, 1)
    return MergeMap(images=images, sizes=vt.sizes, source=vt.source, assignment=assignment, patch_size=p,
                    prefix=prefix, shared=shared, settings=merge_settings(vision, spec, grid[0] * grid[1]))


def _size_text(s: float) -> str:
    return f"{int(round(s))}" if abs(s - round(s)) < 1e-4 else f"{s:.2f}"


def token_labels(mm: MergeMap, frame: int) -> list[tuple[int, float, tuple[int, int] | None]]:
    """(reading position, size, (row, col) of the patch that carries the label) for every token of ``frame``:
    the token's patch nearest its centroid, so the label always sits on the token itself; None for a token that
    holds no patch of its own (a class token)."""
    a = mm.assignment[frame]
    out = []
    for k in range(mm.tokens_per_frame):
        cells = (a == k).nonzero().to(torch.float64)  # (patches, 2) rows and columns
        where = None
        if len(cells):
            centre = cells.mean(0)
            r, c = cells[((cells - centre) ** 2).sum(1).argmin()].long().tolist()
            where = (r, c)
        out.append((k, float(mm.sizes[frame, k]), where))
    return out


def token_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours: tab20 up to 20, else golden-ratio hues with alternating lightness."""
    if n <= 20:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the saturated ten first
        return [tuple(cmap(order[i])[:3]) for i in range(n)]
    return [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75 if i % 2 else 0.95, 0.95 if i % 3 else 0.75)
            for i in range(n)]


def adjacent_tokens(assignment: Tensor) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of tokens holding two patches side by side or one above the other in a frame's
    (gh, gw) patch assignment."""
    a = assignment
    pairs = torch.cat([torch.stack([a[:, :-1], a[:, 1:]], -1).reshape(-1, 2),
                       torch.stack([a[:-1, :], a[1:, :]], -1).reshape(-1, 2)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]].sort(1).values
    return {(int(x), int(y)) for x, y in pairs.unique(dim=0).tolist()}


def colour_tokens(assignment: Tensor, sizes: Tensor, palette: int = 10) -> list[int]:
    """A palette index per token such that adjacent tokens (:func:`adjacent_tokens`) never share one: greedy
    graph colouring, the most connected (then largest) tokens first, each taking the least used index none of its
    coloured neighbours has. It stays within ``palette`` colours when it can (a frame's tokens are nearly planar:
    greedy needs about 4 to 6) and goes past it only when a token's neighbours already hold them all."""
    n = int(sizes.shape[0])
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for x, y in adjacent_tokens(assignment):
        nbrs[x].add(y)
        nbrs[y].add(x)
    order = sorted(range(n), key=lambda k: (-len(nbrs[k]), -float(sizes[k]), k))
    colour = [-1] * n
    used = [0] * palette
    for k in order:
        taken = {colour[j] for j in nbrs[k] if colour[j] >= 0}
        free = [c for c in range(len(used)) if c not in taken]
        if not free:
            used.append(0)
            free = [len(used) - 1]
        c = min(free, key=lambda c: (used[c], c))
        colour[k] = c
        used[c] += 1
    return colour


def frame_colours(mm: MergeMap, frame: int) -> Tensor:
    """(n, 3) RGB per token of ``frame``: :func:`colour_tokens` over tab10 (qualitative), more hues if needed."""
    idx = colour_tokens(mm.assignment[frame], mm.sizes[frame])
    palette = token_colours(max(max(idx, default=0) + 1, 10))
    return torch.tensor([palette[c] for c in idx], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ drawing


def figure(mm: MergeMap, title: str = "", alpha: float = 0.6):
    """Two panels per frame, side by side: the frame as the encoder saw it, then the same frame with each token's
    patches filled in its colour, token edges and ``k:size`` labels. A bare matplotlib ``Figure`` (no pyplot
    state), so a server may draw it from any thread; :func:`draw` writes it as a PNG, :func:`render` returns its
    pixels."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    f = mm.images.shape[0]
    gh, gw = mm.assignment.shape[1:]
    size_px = mm.images.shape[1]
    pairs = min(f, 2)  # frames per row; each frame takes two panels
    cols, rows = 2 * pairs, (f + pairs - 1) // pairs
    panel = 3.0
    width = max(panel * cols, 7.5)  # room for the title
    title = "\n".join(textwrap.fill(line, width=int(width * 11)) for line in title.splitlines())
    head = 0.19 * (title.count("\n") + 1) + 0.15  # inches of title above the panels
    height = (panel + 0.35) * rows + head
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    fontsize = max(4.0, min(9.0, 130.0 / max(gh, gw)))
    p = mm.patch_size
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(f):
        raw_ax, ax = axes[i // pairs, 2 * (i % pairs)], axes[i // pairs, 2 * (i % pairs) + 1]
        image = mm.images[i].numpy()
        idx = f"frame {mm.frame_indices[i]} of 0..{mm.total_frames - 1}" if mm.frame_indices else f"frame {i}"
        raw_ax.imshow(image, extent=(0, size_px, size_px, 0), interpolation="nearest")
        raw_ax.set_title(f"{idx}: as the encoder sees it", fontsize=8)
        a = mm.assignment[i].numpy()
        h, w = gh * p, gw * p  # the patch grid may stop short of the image's edge
        ax.imshow(image, extent=(0, size_px, size_px, 0), interpolation="nearest")
        ax.imshow(frame_colours(mm, i).numpy()[a], extent=(0, w, h, 0), alpha=alpha, interpolation="nearest")
        segs = []  # an edge wherever two neighbouring patches belong to different tokens
        for r in range(gh):
            for c in range(gw):
                if c + 1 < gw and a[r, c] != a[r, c + 1]:
                    segs.append([((c + 1) * p, r * p), ((c + 1) * p, (r + 1) * p)])
                if r + 1 < gh and a[r, c] != a[r + 1, c]:
                    segs.append([(c * p, (r + 1) * p), ((c + 1) * p, (r + 1) * p)])
        ax.add_collection(LineCollection(segs, colors="white", linewidths=0.8))
        off_grid = []
        for k, s, where in token_labels(mm, i):
            if where is None:
                off_grid.append(f"{k}:{_size_text(s)}")
                continue
            r, c = where
            ax.text((c + 0.5) * p, (r + 0.5) * p, f"{k}:{_size_text(s)}", ha="center", va="center",
                    fontsize=fontsize, color="black", bbox=dict(boxstyle="round,pad=0.1", fc=(1, 1, 1, 0.75), lw=0))
        ax.set_xlim(0, size_px)
        ax.set_ylim(size_px, 0)
        merged = f"{mm.tokens_per_frame} merged tokens"
        if off_grid:  # tokens without a patch of their own: the class token
            merged += f"\nclass token (no patch): {', '.join(off_grid)}"
        ax.set_title(merged, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def draw(mm: MergeMap, out: str | os.PathLike, title: str = "", alpha: float = 0.6) -> Path:
    """Write the merge picture (:func:`figure`) as a PNG at ``out`` (atomically)."""
    return save_figure(figure(mm, title, alpha), out)


def render(mm: MergeMap, title: str = "", alpha: float = 0.6, dpi: int = 110):
    """The merge picture (:func:`figure`) as an RGB image, a uint8 array (height, width, 3): what :func:`draw`
    writes, for a page that shows it without a file."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(mm, title, alpha)
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def describe(mm: MergeMap) -> str:
    """The text summary: tokens per frame and the settings, then every frame's token sizes in reading order."""
    st = mm.settings
    cls = f" + {mm.prefix} class token" if mm.prefix else ""
    lines = [f"{mm.tokens_per_frame} tokens per frame from {st['patches']} patches{cls} "
             f"(merge: {st['spec']}; r per layer {st['schedule']})"]
    if mm.shared:
        lines.append("  (overlapping windows: a shared patch is drawn in the token holding its largest share)")
    for i in range(mm.sizes.shape[0]):
        idx = mm.frame_indices[i] if mm.frame_indices else i
        sizes = " ".join(_size_text(float(v)) for v in mm.sizes[i])
        lines.append(f"  frame {idx}: sizes in reading order: {sizes}")
    return "\n".join(lines)


def title_for(mm: MergeMap, video: str, weights: str) -> str:
    st = mm.settings
    gh, gw = mm.assignment.shape[1:]
    cls = f" + {mm.prefix} class token" if mm.prefix else ""
    shared = " | shared patches drawn in their largest share" if mm.shared else ""
    return (f"{Path(video).name}: {mm.tokens_per_frame} tokens per frame from {gh}x{gw}={st['patches']} patches "
            f"of {mm.patch_size}px{cls} | merge: {st['spec']} | r per layer {st['schedule']}\n"
            f"label k:s = token k in the order the language model reads the frame (frame f follows frame f-1), "
            f"s = its size in patches | {weights}{shared}")


# ------------------------------------------------------------------------------------------------ command


def run_merge(video: str, config: str, ckpt: str | None = None, frames: int | None = None) -> MergeMap:
    """Everything ``aurora viz merge`` computes, without drawing."""
    recipe = load_recipe(config)
    data = section(recipe, "data")
    if ckpt is not None:  # a checkpoint's own inference settings (frames, image size, mean / std) win
        from aurora.infer.runconfig import inference_settings

        saved = inference_settings(ckpt, required=False)
        if saved.get("source") is not None:
            data = {**data, **{k: v for k, v in saved.items() if v is not None}}
    num = frames if frames is not None else int(data.get("num_frames") or 4)
    if num < 1:
        raise VizError(f"--frames must be >= 1, got {num}")
    raw, idx, total = decode_frames(video, num)  # a bad video fails before the encoder is built
    vision = build_vision(recipe, ckpt)
    image_size = int(data.get("image_size") or vision.config.image_size)
    mean = tuple(data.get("mean") or DEFAULT_MEAN)
    std = tuple(data.get("std") or DEFAULT_STD)
    pixels = to_pixels(raw, image_size, mean, std)  # the datamodule's preprocessing (data/shards.py)
    mm = merge_map(vision, pixels, mean, std, spec=section(recipe, "model").get("merge"))
    mm.frame_indices, mm.total_frames = idx, total
    return mm


def viz_merge_main(argv: list[str]) -> int:
    """``aurora viz merge``: draw which patches every merged token holds, and the reading order."""
    parser = mp = argparse.ArgumentParser(prog="aurora viz merge", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    mp.add_argument("--video", required=True, help="a video file (.mp4 or anything PyAV reads)")
    mp.add_argument("--config", required=True, help="recipe: a YAML path or a packaged name (demo)")
    mp.add_argument("--ckpt", default=None, help="Lightning checkpoint for the vision weights (default: random)")
    mp.add_argument("--frames", type=int, default=None, help="frames sampled uniformly (default: data.num_frames)")
    mp.add_argument("--out", default="merge.png", help="output PNG (default: merge.png)")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    try:
        mm = run_merge(args.video, args.config, args.ckpt, args.frames)
    except (VizError, RecipeError, VideoDecodeError, FileNotFoundError) as e:
        print(f"aurora viz: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, TypeError) as e:  # registry names, part arguments the recipe got wrong
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"aurora viz: error: bad recipe {args.config}: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    weights = f"weights: {args.ckpt}" if args.ckpt else "random weights (no --ckpt)"
    try:
        path = draw(mm, args.out, title_for(mm, args.video, weights))
    except ImportError:
        print("aurora viz: error: drawing needs matplotlib (pip install 'aurora-long[dev]')", file=sys.stderr)
        return 2
    print(describe(mm))
    if not args.ckpt:
        print("note: random vision weights (no --ckpt): the merges are those of an untrained encoder")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(viz_merge_main(sys.argv[1:]))
