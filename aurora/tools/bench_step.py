"""``aurora bench step``: the demo's training step, per backbone side by side, with a per-part profile.

The model is the one a recipe (default ``recipes/demo.yaml``) builds: its vision encoder, merge, projector and
language model sizes; ``--backbones`` swaps the language model's registry name (default ``rwkv6`` and the
``transformer`` baseline), keeping ``vocab_size``, ``d_model`` and ``n_layer``. The transformer gets heads of the
RWKV's ``head_size`` (``d_model // head_size`` heads), so both read the same width in heads of the same size. The
recipe's ``freeze`` list is applied (the demo freezes the encoder), the optimiser is the module's: AdamW, fused,
with its decay groups (:func:`aurora.train.optim.decays`), zeroing gradients to None as Lightning does.

The batch is a demo batch: ``--batch`` prompts built by the prompt template from the synthetic set's questions (the
sandwich prompt around ``--frames`` frames; random pixels, which cost the encoder and the merge what frames do)
and each answer as labels; the sequence the language model reads is the prompt with the video tokens spliced in
(96 tokens for the demo's sizes: 68 visual + 28 text).

Every round times, for every backbone in turn (interleaved, so machine load hits them alike):

* **step**: the training step as :class:`aurora.train.module.AuroraModule` runs it (``model(pixels, ids,
  labels)``, ``loss.backward()``, ``optimizer.step()``, ``zero_grad``).
* **parts**: the same step split at the parts' boundaries by detached leaves, so each backward is timed alone
  (the gradients are the same): ``vision`` (the encoder with its merge; no backward when frozen),
  ``projector`` (projector + splice into the text embeddings, forward and backward, the embedding's gradient
  included), ``rnn`` (the language model's blocks, forward and backward), ``head+loss`` (final logits at the
  answer positions, cross-entropy, forward and backward), ``optimizer`` (AdamW step + zero_grad).

Figures are medians over ``--repeat`` rounds after ``--warmup`` untimed ones, in ms, at ``--threads`` threads,
twice: wall-clock time and the process's CPU time (``time.process_time``). On a shared machine the wall clock also
counts the time the process waited for a core; the CPU time does not (at one thread it is the work done), so its
ratios move far less with the load.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from typing import Any

PARTS = ("vision", "projector", "rnn", "head+loss", "optimizer")


def demo_batch(batch_size: int, frames: int, image_size: int, seed: int = 0) -> dict[str, Any]:
    """A training batch of the synthetic set's prompts (sandwich template, answers as labels), random pixels."""
    import torch

    from aurora.data.prompt import PromptTemplate, Tokenizer
    from aurora.data.shards import collate
    from aurora.data.synthetic import CATEGORIES, COLORS, DIRECTIONS, SHAPES, question_for

    tok, template, rng = Tokenizer(), PromptTemplate(), random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch_size):
        q, a, _ = question_for(CATEGORIES[i % len(CATEGORIES)], rng.choice(list(COLORS)), rng.choice(SHAPES),
                               rng.choice(list(DIRECTIONS)))
        ids, labels = template.build(tok, q, a, "question")
        samples.append({"pixels": torch.randn(frames, 3, image_size, image_size, generator=gen),
                        "input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return collate(samples)


def _rnn_spec(recipe_rnn: dict[str, Any], name: str) -> dict[str, Any]:
    keep = {k: recipe_rnn[k] for k in ("vocab_size", "d_model", "n_layer") if k in recipe_rnn}
    if name == recipe_rnn.get("name"):
        return dict(recipe_rnn)
    if name == "transformer":
        head = recipe_rnn.get("head_size", 64)
        keep["n_head"] = max(1, keep.get("d_model", 2048) // head)
    return {"name": name, **keep}


class StepBench:
    """One backbone's model, optimiser and batch, and its timed step / parts."""

    def __init__(self, model_spec: dict[str, Any], batch: dict[str, Any], seed: int = 0):
        import torch

        from aurora.model import AuroraModel
        from aurora.train.optim import decays

        torch.manual_seed(seed)
        self.model = AuroraModel.from_specs(vision=model_spec["vision"], merge=model_spec.get("merge"),
                                            projector=model_spec.get("projector", "mlp"), rnn=model_spec["rnn"])
        for part in model_spec.get("freeze") or []:
            getattr(self.model, part).requires_grad_(False)
        self.model.train()
        wd = float(model_spec.get("weight_decay", 0.0))
        groups: dict[bool, list] = {True: [], False: []}
        for part in ("vision", "projector", "rnn"):
            for name, p in getattr(self.model, part).named_parameters():
                if p.requires_grad:
                    groups[decays(name, p)].append(p)
        self.opt = torch.optim.AdamW([{"params": groups[True], "weight_decay": wd},
                                      {"params": groups[False], "weight_decay": 0.0}],
                                     lr=float(model_spec.get("lr", 1e-3)), fused=True)
        self.batch = batch
        self.frozen_vision = not any(p.requires_grad for p in self.model.vision.parameters())

    def step(self) -> float:
        """The training step as the LightningModule runs it; returns the loss."""
        b = self.batch
        out = self.model(b["pixels"], b["input_ids"], b["labels"])
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    def parts(self) -> tuple[dict[str, float], dict[str, float], float]:
        """The same step split at the parts' boundaries: wall-clock seconds per part, the process's CPU seconds
        per part, and the loss."""
        import torch
        import torch.nn.functional as F

        from aurora.types import IGNORE_INDEX

        m, b = self.model, self.batch

        def clock() -> tuple[float, float]:
            return time.perf_counter(), time.process_time()

        t0 = clock()
        with torch.set_grad_enabled(not self.frozen_vision):
            vt = m.vision.encode_videos(b["pixels"], None)
        tokens = vt.tokens.reshape(b["pixels"].shape[0], -1, vt.tokens.shape[-1])
        t1 = clock()
        video = m.projector(tokens)
        embeds, labels = m.splice(b["input_ids"], video, b["labels"])
        t2 = clock()
        leaf_in = embeds.detach().requires_grad_()
        hidden, _ = m.rnn(leaf_in)
        t3 = clock()
        leaf_out = hidden.detach().requires_grad_()
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = m.rnn.logits(leaf_out[:, :-1][mask]).float()
        loss = F.cross_entropy(logits, targets[mask])
        loss.backward()
        t4 = clock()
        hidden.backward(leaf_out.grad)
        t5 = clock()
        embeds.backward(leaf_in.grad)  # an encoder that trains has its backward here too
        t6 = clock()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t7 = clock()
        spans = {"vision": [(t0, t1)], "projector": [(t1, t2), (t5, t6)], "rnn": [(t2, t3), (t4, t5)],
                 "head+loss": [(t3, t4)], "optimizer": [(t6, t7)]}
        wall = {p: sum(b[0] - a[0] for a, b in v) for p, v in spans.items()}
        cpu = {p: sum(b[1] - a[1] for a, b in v) for p, v in spans.items()}
        return wall, cpu, float(loss.detach())


def run_step_bench(recipe: str, backbones: list[str], batch_size: int, frames: int | None, threads: int,
                   repeat: int, warmup: int, log=print) -> dict[str, Any]:
    import torch
    import yaml

    from aurora.recipes import resolve

    torch.set_num_threads(threads)
    with open(resolve(recipe)) as f:
        config = yaml.safe_load(f)
    model_cfg, data_cfg = dict(config["model"]), dict(config.get("data") or {})
    frames = frames or int(data_cfg.get("num_frames", 4))
    image_size = int(data_cfg.get("image_size", model_cfg["vision"].get("image_size", 64)))
    batch = demo_batch(batch_size, frames, image_size)
    benches = {}
    for name in backbones:
        spec = dict(model_cfg, rnn=_rnn_spec(dict(model_cfg["rnn"]), name))
        benches[name] = StepBench(spec, batch)
    seq = {}
    for name, bench in benches.items():
        for _ in range(warmup):
            bench.step()
            bench.parts()
        with torch.no_grad():
            video, _ = bench.model.encode_video(batch["pixels"])
            seq[name] = bench.model.splice(batch["input_ids"], video)[0].shape[1]
    steps: dict[str, list[float]] = {n: [] for n in benches}
    steps_cpu: dict[str, list[float]] = {n: [] for n in benches}
    parts: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PARTS} for n in benches}
    parts_cpu: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PARTS} for n in benches}
    for r in range(repeat):
        for name, bench in benches.items():
            t0, c0 = time.perf_counter(), time.process_time()
            bench.step()
            steps[name].append(time.perf_counter() - t0)
            steps_cpu[name].append(time.process_time() - c0)
            got, got_cpu, _ = bench.parts()
            for p, s in got.items():
                parts[name][p].append(s)
                parts_cpu[name][p].append(got_cpu[p])
        log(f"round {r + 1}/{repeat}: " + ", ".join(f"{n} {steps[n][-1] * 1e3:.0f} ms" for n in benches))
    records = []
    for name, bench in benches.items():
        n_params = sum(p.numel() for p in bench.model.rnn.parameters())
        med = {p: statistics.median(v) * 1e3 for p, v in parts[name].items()}
        med_cpu = {p: statistics.median(v) * 1e3 for p, v in parts_cpu[name].items()}
        records.append({
            "backbone": name, "rnn": bench.model.rnn.__class__.__name__, "rnn_params": n_params,
            "tokens": int(seq[name]), "step_ms": statistics.median(steps[name]) * 1e3,
            "step_ms_min": min(steps[name]) * 1e3, "parts_ms": med, "parts_total_ms": sum(med.values()),
            "step_cpu_ms": statistics.median(steps_cpu[name]) * 1e3, "step_cpu_ms_min": min(steps_cpu[name]) * 1e3,
            "parts_cpu_ms": med_cpu, "parts_cpu_total_ms": sum(med_cpu.values()),
        })
    base = next((r for r in records if r["backbone"] == "transformer"), None)
    for r in records:
        r["step_vs_transformer"] = r["step_ms"] / base["step_ms"] if base else None
        r["step_cpu_vs_transformer"] = r["step_cpu_ms"] / base["step_cpu_ms"] if base else None
    return {"bench": "step", "recipe": recipe, "batch": batch_size, "frames": frames, "threads": threads,
            "repeat": repeat, "torch": torch.__version__, "machine": platform.machine(),
            "rnn_specs": {n: _rnn_spec(dict(model_cfg["rnn"]), n) for n in backbones}, "records": records}


def format_step(payload: dict[str, Any]) -> str:
    lines = []
    for clock, key, parts_key, total_key, ratio_key in (
            ("wall", "step_ms", "parts_ms", "parts_total_ms", "step_vs_transformer"),
            ("cpu", "step_cpu_ms", "parts_cpu_ms", "parts_cpu_total_ms", "step_cpu_vs_transformer")):
        if any(key not in r for r in payload["records"]):
            continue
        head = f"{clock:<5}{'backbone':<12} {'tokens':>6} {'step ms':>8} {'vs tf':>6} " + " ".join(f"{p:>10}" for p in PARTS)
        lines.append(head + f" {'sum':>7}")
        for r in payload["records"]:
            ratio = f"{r[ratio_key]:.2f}" if r.get(ratio_key) is not None else "-"
            lines.append(f"{clock:<5}{r['backbone']:<12} {r['tokens']:>6} {r[key]:>8.1f} {ratio:>6} "
                         + " ".join(f"{r[parts_key][p]:>10.1f}" for p in PARTS) + f" {r[total_key]:>7.1f}")
    return "\n".join(lines)


def bench_step_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aurora bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="recipes/demo.yaml", help="the recipe whose model is timed (default demo)")
    p.add_argument("--backbones", type=lambda s: [x for x in s.split(",") if x], default=["rwkv6", "transformer"],
                   help="comma-separated language models (registry names; default rwkv6,transformer)")
    p.add_argument("--batch", type=int, default=16, help="samples per step (default: %(default)s)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the recipe's num_frames)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10, help="timed rounds (median; default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--json", default=None, help="write the records here")
    args = p.parse_args(argv)
    from aurora.registry import RNN

    unknown = [b for b in args.backbones if b not in RNN]
    if unknown:
        raise SystemExit(f"aurora bench step: unknown backbone {', '.join(unknown)}; known: {', '.join(RNN.names())}")
    if args.batch < 1 or args.repeat < 1 or args.threads < 1 or args.warmup < 0:
        raise SystemExit("aurora bench step: --batch, --repeat and --threads must be >= 1, --warmup >= 0")
    payload = run_step_bench(args.config, args.backbones, args.batch, args.frames, args.threads, args.repeat,
                             args.warmup, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"training step: {args.config}, batch {args.batch}, {payload['frames']} frames, {args.threads} thread(s), "
          f"median of {args.repeat} interleaved rounds, ms (wall clock and process CPU time), torch {payload['torch']}")
    print(format_step(payload))
    if args.json:
        from aurora.io import write_json

        write_json(args.json, payload)
        print(f"records written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(bench_step_main(sys.argv[1:]))
