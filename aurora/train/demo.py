"""``aurora demo``: the demo's two stages, its held-out test and the frame-order ablation, in one command."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from aurora.io import write_json
from aurora.recipes import resolve


def demo_main(argv: list[str]) -> int:
    """Train the demo in its two stages (the vision encoder on labelled frames, then the whole model on the video
    QA set with that encoder frozen), evaluate on held-out videos, and run the frame-order ablation."""
    parser = argparse.ArgumentParser(prog="aurora demo", description=demo_main.__doc__)
    parser.add_argument("--config", default="recipes/demo.yaml",
                        help="the video recipe, run second (a file or a packaged recipe name such as 'demo'); "
                        "other --SECTION.KEY=VALUE flags override it, --vision.SECTION.KEY=VALUE the vision stage's")
    parser.add_argument("--vision-config", default="recipes/demo_vision.yaml",
                        help="the vision stage, run first; 'none' skips it (the video recipe's init_from must exist)")
    parser.add_argument("--out", default=None, help="metrics directory (default: the trainer's default_root_dir)")
    args, overrides = parser.parse_known_args(argv)
    from aurora.train.lightning_cli import AuroraCLI, VisionStageCLI  # imported once the arguments parse (--help stays quick)

    vision_overrides = [o for o in overrides if o.startswith("--vision.")]
    overrides = [o for o in overrides if not o.startswith("--vision.")]
    vision_stage: dict[str, Any] | None = None
    run = _run_name(resolve(args.config), overrides)  # both stages' MLflow runs: <run>-demo-vision, <run>-demo-video
    if args.vision_config != "none":
        print(f"stage 1/2: the vision encoder on labelled frames ({args.vision_config})", flush=True)
        start = time.perf_counter()
        stage1 = VisionStageCLI(args=["fit", "--config", resolve(args.vision_config),
                                      *("--" + o.removeprefix("--vision.") for o in vision_overrides)],
                                stage="demo-vision", run_name=run)
        _warn_if_cut(stage1.trainer, "stage 1 (the vision encoder)")
        vision_stage = {
            "config": args.vision_config, "steps": stage1.trainer.global_step,
            "max_steps": stage1.trainer.max_steps,
            "seconds": round(time.perf_counter() - start, 1),
            "val": {k.removeprefix("val/"): float(v) for k, v in stage1.trainer.callback_metrics.items()
                    if k.startswith("val/")},
        }
        print("vision stage, held-out frames: " + ", ".join(f"{k} {v:.3f}" for k, v in vision_stage["val"].items()))
        print(f"stage 2/2: the whole model on the video QA set ({args.config})", flush=True)
    start = time.perf_counter()
    cli = AuroraCLI(args=["--config", resolve(args.config), *overrides], run=False, stage="demo-video", run_name=run)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    out = Path(args.out or trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)

    trainer.fit(model, datamodule=dm)
    video_seconds = round(time.perf_counter() - start, 1)
    _warn_if_cut(trainer, "stage 2 (the video model)")
    results: dict[str, Any] = {}
    for order in ("original", "shuffled", "reversed"):
        dm.frame_order = order
        (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
        results[order] = {k.removeprefix("test/"): float(v) for k, v in metrics.items()}
    dm.frame_order = "original"

    main = results["original"]
    summary = {
        "accuracy": main["accuracy"],
        "chance": main["chance"],
        "per_category": {k.removeprefix("accuracy_"): v for k, v in main.items() if k.startswith("accuracy_")},
        "frame_order_ablation": results,
        "train_steps": trainer.global_step,
        "max_steps": trainer.max_steps,
        "train_seconds": video_seconds,
        "config": args.config,
        "vision_stage": vision_stage,
    }
    write_json(out / "metrics.json", summary)
    for order, m in results.items():
        print(f"frames {order:>9}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    print(f"metrics written to {out / 'metrics.json'}")
    print(f"demo accuracy: {main['accuracy']:.3f} (chance: {main['chance']:.3f})")
    return 0


def _run_name(recipe: str, overrides: list[str]) -> str | None:
    """The video stage's run name (its ``trainer.default_root_dir``'s last folder: ``demo`` for runs/demo), from
    ``--trainer.default_root_dir`` or the recipe; None when neither says (then each stage's own root names it)."""
    import yaml

    root = None
    for i, o in enumerate(overrides):
        if o.startswith("--trainer.default_root_dir="):
            root = o.split("=", 1)[1]
        elif o == "--trainer.default_root_dir" and i + 1 < len(overrides):
            root = overrides[i + 1]
    if root is None:
        try:
            recipe_data = yaml.safe_load(Path(recipe).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None  # the CLI names the problem with the recipe when it parses it
        trainer = recipe_data.get("trainer") if isinstance(recipe_data, dict) else None
        root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return Path(str(root)).name if root else None


def _warn_if_cut(trainer, stage: str) -> None:
    """The demo's accuracy is reached by its step count; ``max_time`` is only a safety net. Say so loudly when the
    net was hit (a machine far slower than the recipe expects), since the accuracy then falls short for that reason."""
    if trainer.max_steps and 0 < trainer.global_step < trainer.max_steps:
        print(f"warning: {stage} stopped by trainer.max_time after {trainer.global_step} of {trainer.max_steps} "
              "steps; its accuracy may fall short of the demo's target (raise --trainer.max_time on a slow machine)",
              flush=True)
