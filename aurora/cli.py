"""The ``aurora`` command.

    aurora fit|validate|test|predict --config recipes/demo.yaml [--print_config] [--model.merge.order ...]
    aurora data synthetic --out DIR [--train N --val N --test N --frames F --size S --seed K]
    aurora data convert --annotations A.json --videos DIR --out DIR [--split train] [--shard-size 1GB] [--workers N]
    aurora pretrain-vision --config recipes/demo_vision.yaml   (the demo's vision stage: the encoder on labelled frames)
    aurora demo [--config recipes/demo.yaml] [--vision-config recipes/demo_vision.yaml] [--out runs/demo]
    aurora bench vision [--merges none,tome:0.5,tome:0.1] [--json P --plot P.png]
    aurora bench rnn [--backbones rwkv6,mamba] [--d-model 256 --n-layer 2] [--lengths 1024,4096] [--json P --plot P.png]
    aurora convert --backbone NAME --src PATH --out PATH.safetensors [--format auto|official|hf|state-spaces]
    aurora viz merge --video V.mp4 --config recipes/demo.yaml [--ckpt PATH] [--frames N] [--out merge.png]
    aurora ask --ckpt C --video V.mp4 --question Q [--fps F | --frames N] [--save-state P | --load-state P]
    aurora eval --benchmark mvbench|videomme|egoschema|activitynet_qa|msvd_qa --annotations PATH --videos DIR --ckpt C --out DIR
    aurora ablate --grid recipes/ablations/order_keep.yaml --out DIR   (a grid of training runs, resumable)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from aurora.data.datamodule import AuroraDataModule
from aurora.io import write_json
from aurora.lit import AuroraModule
from aurora.recipes import resolve

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


class RunConfig(SaveConfigCallback):
    """Writes the resolved recipe to ``<default_root_dir>/config.yaml`` and attaches it to the MLflow run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        for logger in trainer.loggers:
            if hasattr(logger, "log_recipe"):  # aurora.tracking.MLFlowLogger: flattened params + the file
                import yaml

                logger.log_recipe(yaml.safe_load(self.parser.dump(self.config, skip_none=False)), path)
            elif hasattr(logger, "experiment") and hasattr(logger, "run_id") and logger.run_id:
                logger.experiment.log_artifact(logger.run_id, str(path))


class AuroraCLI(LightningCLI):
    """LightningCLI over :class:`AuroraModule` and :class:`AuroraDataModule` with our defaults: MLflow in a local
    sqlite store, and a config.yaml per run that a re-run may overwrite."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(AuroraModule, AuroraDataModule, *args, **with_defaults(kwargs, "aurora"))


def with_defaults(kwargs: dict[str, Any], experiment: str) -> dict[str, Any]:
    """Our LightningCLI defaults: the recipe saved as config.yaml (a re-run may overwrite it), MLflow in the local
    sqlite store under ``experiment``, checkpoints written atomically (tmp + rename)."""
    kwargs.setdefault("save_config_callback", RunConfig)
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    kwargs.setdefault(
        "trainer_defaults",
        {
            "logger": {
                "class_path": "aurora.tracking.MLFlowLogger",
                "init_args": {"experiment_name": experiment, "tracking_uri": DEFAULT_TRACKING_URI},
            },
            "plugins": [{"class_path": "aurora.callbacks.AtomicCheckpointIO"}],
        },
    )
    return kwargs


class VisionStageCLI(LightningCLI):
    """LightningCLI over :class:`aurora.vision_stage.VisionStage` and any LightningDataModule of labelled images
    (``data: {class_path: aurora.data.frames.SyntheticFrameData, ...}``), with :class:`AuroraCLI`'s defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import lightning as L

        from aurora.vision_stage import VisionStage

        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(VisionStage, L.LightningDataModule, *args, **with_defaults(kwargs, "aurora-vision"))


def data_main(argv: list[str]) -> int:
    if argv and argv[0] == "convert":
        from aurora.data.convert import convert_main

        return convert_main(argv[1:])
    parser = argparse.ArgumentParser(prog="aurora data", description="Dataset tools.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("convert", help="LLaVA-style annotations + a video folder -> WebDataset shards (see docs/data.md)")
    syn = sub.add_parser("synthetic", help="write the synthetic moving-shapes video QA dataset as WebDataset shards")
    syn.add_argument("--out", required=True, help="output directory")
    syn.add_argument("--train", type=int, default=3000)
    syn.add_argument("--val", type=int, default=200)
    syn.add_argument("--test", type=int, default=300)
    syn.add_argument("--frames", type=int, default=8)
    syn.add_argument("--size", type=int, default=64)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--samples-per-shard", type=int, default=500)
    syn.add_argument("--shape-size", type=float, default=0.14, help="shape radius as a fraction of the frame size")
    args = parser.parse_args(argv)
    from aurora.data.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(
        args.out, train=args.train, val=args.val, test=args.test, frames=args.frames, size=args.size,
        seed=args.seed, samples_per_shard=args.samples_per_shard, shape_size=args.shape_size,
    )
    print(json.dumps(manifest, indent=2))
    return 0


def demo_main(argv: list[str]) -> int:
    """Train the demo in its two stages (the vision encoder on labelled frames, then the whole model on the video
    QA set with that encoder frozen), evaluate on held-out videos, and run the frame-order ablation."""
    parser = argparse.ArgumentParser(prog="aurora demo", description=demo_main.__doc__)
    parser.add_argument("--config", default="recipes/demo.yaml")
    parser.add_argument("--vision-config", default="recipes/demo_vision.yaml",
                        help="the vision stage, run first; 'none' skips it (the video recipe's init_from must exist)")
    parser.add_argument("--out", default=None, help="metrics directory (default: the trainer's default_root_dir)")
    args, overrides = parser.parse_known_args(argv)
    vision_overrides = [o for o in overrides if o.startswith("--vision.")]
    overrides = [o for o in overrides if not o.startswith("--vision.")]
    vision_stage: dict[str, Any] | None = None
    if args.vision_config != "none":
        print(f"stage 1/2: the vision encoder on labelled frames ({args.vision_config})", flush=True)
        start = time.perf_counter()
        stage1 = VisionStageCLI(args=["fit", "--config", resolve(args.vision_config),
                                      *("--" + o.removeprefix("--vision.") for o in vision_overrides)])
        vision_stage = {
            "config": args.vision_config, "steps": stage1.trainer.global_step,
            "seconds": round(time.perf_counter() - start, 1),
            "val": {k.removeprefix("val/"): float(v) for k, v in stage1.trainer.callback_metrics.items()
                    if k.startswith("val/")},
        }
        print("vision stage, held-out frames: " + ", ".join(f"{k} {v:.3f}" for k, v in vision_stage["val"].items()))
        print(f"stage 2/2: the whole model on the video QA set ({args.config})", flush=True)
    start = time.perf_counter()
    cli = AuroraCLI(args=["--config", resolve(args.config), *overrides], run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    out = Path(args.out or trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)

    trainer.fit(model, datamodule=dm)
    video_seconds = round(time.perf_counter() - start, 1)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        return data_main(argv[1:])
    if argv and argv[0] == "demo":
        return demo_main(argv[1:])
    if argv and argv[0] == "pretrain-vision":
        VisionStageCLI(args=["fit", *argv[1:]])
        return 0
    if argv and argv[0] == "bench":
        from aurora.bench import bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "convert":
        from aurora.convert import convert_main

        return convert_main(argv[1:])
    if argv and argv[0] == "viz":
        from aurora.viz import viz_main

        return viz_main(argv[1:])
    if argv and argv[0] == "ask":
        from aurora.stream import ask_main

        return ask_main(argv[1:])
    if argv and argv[0] == "eval":
        from aurora.evaluate import eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "ablate":
        from aurora.ablate import ablate_main

        return ablate_main(argv[1:])
    AuroraCLI(args=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
