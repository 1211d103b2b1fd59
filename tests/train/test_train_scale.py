"""Training at scale: the AuroraLong stage recipes, stage chaining (init_from), LoRA, gradient checkpointing, LR
schedules, non-finite losses, atomic checkpoints, kill + resume, DDP / FSDP2 equivalence and MLflow tracking.

Run as a script, this file is the worker of the distributed tests:
    python tests/train/test_train_scale.py STRATEGY DEVICES BATCH OUT.json
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from aurora.data.shards import collate
from aurora.train.module import AuroraModule
from aurora.train.optim import lr_schedule
from aurora.types import IGNORE_INDEX, VIDEO_TOKEN

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "auroralong"
STAGES = ("pretrain", "vision", "language", "language_video")
VISION = dict(name="siglip", hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
              image_size=16, patch_size=8, feature_layer=-2)
RNN = dict(name="rwkv6", vocab_size=64, d_model=32, n_layer=2, head_size=16)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def tiny(**kw) -> AuroraModule:
    torch.manual_seed(0)
    args = dict(vision=VISION, rnn=RNN, merge=None, lr=1e-2, warmup_ratio=0.0, schedule="constant")
    return AuroraModule(**(args | kw))


def shifted(path: Path) -> dict:
    """Save a tiny model's weights, randomly moved (so unlike a fresh seeded model's, and without RWKV's zero-
    initialised output projections, which block every gradient into a block's inner layers), as a Lightning
    checkpoint; returns them."""
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in tiny().model.state_dict().items()}
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return state


class ToyVideoQA(Dataset):
    """Deterministic samples of equal length (so a token-mean loss is the same however a batch is split);
    ``nan_at``: indices whose pixels are NaN."""

    def __init__(self, n: int = 16, frames: int = 2, nan_at: tuple[int, ...] = ()):
        self.n, self.frames, self.nan_at = n, frames, set(nan_at)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(1, 64, (8,), generator=g)
        ids[2] = VIDEO_TOKEN
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[5:] = ids[5:]
        pixels = torch.randn(self.frames, 3, 16, 16, generator=g)
        if i in self.nan_at:
            pixels[:] = float("nan")
        return {"pixels": pixels, "input_ids": ids, "labels": labels, "id": str(i)}


def loader(ds: Dataset, batch_size: int = 2) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


def trainer(**kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, precision="32-true")
    return L.Trainer(**(args | kw))


def cli(*args: str) -> None:
    from aurora.cli import main

    assert main(["fit", *map(str, args)]) == 0


# -- the recipes ---------------------------------------------------------------------------------------------------
PAPER = {  # stage: frozen parts, peak LR, global batch, keep ratio, init_from's stage
    "pretrain": (["vision", "rnn"], 1e-4, 128, 1.0, None),
    "vision": (["rnn"], 4e-5, 2048, 1.0, "pretrain"),
    "language": ([], 1e-5, 512, 0.1, "vision"),
    "language_video": ([], 8e-6, 512, 0.1, "language"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_recipe_parses_with_the_paper_settings(stage, capsys):
    with pytest.raises(SystemExit) as e:
        cli("--config", RECIPES / f"{stage}.yaml", "--print_config")
    assert e.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    frozen, lr, batch, keep, parent = PAPER[stage]
    m, t, d = cfg["model"], cfg["trainer"], cfg["data"]
    assert sorted(m["freeze"]) == sorted(frozen) and m["lr"] == lr
    assert t["devices"] * t["num_nodes"] * d["batch_size"] * t["accumulate_grad_batches"] == batch
    assert m["merge"]["keep_ratio"] == keep and m["merge"]["order"] == "size_ascending"
    assert t["precision"] == "bf16-mixed" and m["schedule"] == "cosine" and m["warmup_ratio"] == 0.03
    assert tuple(m["betas"]) == (0.9, 0.999)
    assert m["vision"]["name"] == "siglip" and m["rnn"]["name"] == "rwkv6" and m["rnn"]["checkpoint"]
    assert (m.get("init_from") is None) == (parent is None)
    if parent:
        assert f"auroralong/{parent}/checkpoints/last.ckpt" in m["init_from"]


def _tiny_weights(root: Path) -> tuple[Path, Path]:
    """A tiny SigLIP Hugging Face directory and a tiny RWKV-6 official .pth converted by `aurora convert`."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from aurora.components.rnn.rwkv6 import RWKV6
    from aurora.tools.convert import convert

    torch.manual_seed(0)
    siglip = root / "siglip"
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=64, image_size=16, patch_size=8)).save_pretrained(siglip)
    pth = root / "rwkv6.pth"
    # "pretrained": random everywhere (a fresh RWKV zero-initialises its output projections: no token would see
    # another, so no gradient would reach the video)
    state = RWKV6(vocab_size=65536, d_model=32, n_layer=1, head_size=16).state_dict()
    torch.save({k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}, pth)
    rwkv = root / "rwkv6.safetensors"
    convert("rwkv6", pth, rwkv)
    return siglip, rwkv


def test_the_stages_chain_one_step_each(tmp_path, monkeypatch):
    """Every stage recipe runs as written, with tiny weights, data and sizes: 1 step on CPU, 32-bit; each stage
    starts from the previous one's last.ckpt (relative paths, as in the recipes)."""
    siglip, rwkv = _tiny_weights(tmp_path)
    monkeypatch.chdir(tmp_path)
    tiny_run = [
        f"--model.vision.pretrained={siglip}", f"--model.rnn.checkpoint={rwkv}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
        "--trainer.precision=32-true", "--trainer.max_steps=1", "--trainer.accumulate_grad_batches=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=runs/csv",
        "--trainer.enable_progress_bar=false",
        "--data.data_dir=data", "--data.synthetic={train: 8, val: 0, test: 0, frames: 2, size: 16}",
        "--data.num_frames=1", "--data.image_size=16", "--data.batch_size=2", "--data.num_workers=0",
    ]
    states = {}
    for stage in STAGES:
        cli("--config", RECIPES / f"{stage}.yaml", *tiny_run)
        ckpt = torch.load(f"runs/auroralong/{stage}/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
        assert ckpt["global_step"] == 1
        states[stage] = ckpt["state_dict"]
    rnn = [k for k in states["pretrain"] if k.startswith("model.rnn.")]
    proj = [k for k in states["pretrain"] if k.startswith("model.projector.")]
    vis = [k for k in states["pretrain"] if k.startswith("model.vision.")]
    # pretrain trains only the projector; vision starts from it (one small step away) with the RNN still frozen
    assert all(torch.equal(states["pretrain"][k], states["vision"][k]) for k in rnn)
    assert 0 < max((states["vision"][k] - states["pretrain"][k]).abs().max().item() for k in proj) < 1e-3
    assert 0 < max((states["vision"][k] - states["pretrain"][k]).abs().max().item() for k in vis) < 1e-3
    # language trains everything, starting from vision; its video phase starts from its image phase
    for a, b in (("vision", "language"), ("language", "language_video")):
        assert 0 < max((states[b][k] - states[a][k]).abs().max().item() for k in rnn + proj + vis) < 1e-3
        assert any(not torch.equal(states[b][k], states[a][k]) for k in rnn)


def test_init_from_requires_the_same_architecture(tmp_path):
    src = shifted(tmp_path / "stage.pt")
    dst = tiny(init_from=str(tmp_path / "stage.pt")).model.state_dict()
    assert dst.keys() == src.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    with pytest.raises(ValueError, match=r"share the architecture.*shape mismatch .*\(32, 32\) vs recipe \(48, 48\)"):
        tiny(init_from=str(tmp_path / "stage.pt"), rnn=RNN | dict(d_model=48))
    with pytest.raises(ValueError, match="missing model.rnn.blocks.2"):
        tiny(init_from=str(tmp_path / "stage.pt"), rnn=RNN | dict(n_layer=3))
    with pytest.raises(ValueError, match="is a directory"):
        tiny(init_from=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        tiny(init_from=str(tmp_path / "nope.ckpt"))


# -- schedules, gradient checkpointing ---------------------------------------------------------------------------
def test_lr_schedules():
    cos = lr_schedule("cosine", 100, 0.1, 0.0)
    lin = lr_schedule("linear", 100, 0.1, 0.2)
    const = lr_schedule("constant", 100, 0.0, 0.0, warmup_steps=4)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(100) == pytest.approx(0.0)
    assert cos(55) == pytest.approx(0.5)  # half-way through the decay
    assert lin(10) == pytest.approx(1.0) and lin(55) == pytest.approx(0.6) and lin(100) == pytest.approx(0.2)
    assert [const(s) for s in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="known: cosine, linear, constant"):
        lr_schedule("step", 100, 0.1, 0.0)


def test_grad_checkpointing_recomputes_and_gives_the_same_gradients():
    batch = collate([ToyVideoQA()[i] for i in range(2)])
    grads, calls = [], []
    for parts in ([], ["vision", "rnn"]):
        m = tiny(grad_checkpoint=parts).train()
        n = [0]
        layer = m.model.vision.layers[0]
        # pre-hooks: a recomputation may stop early, inside the last block, before a forward hook would run
        for module in (layer.self_attn.q_proj, layer.mlp.fc1, m.model.rnn.blocks[0].ffn):
            module.register_forward_pre_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        m.model(batch["pixels"], batch["input_ids"], batch["labels"]).loss.backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
        calls.append(n[0])
    assert calls == [3, 6]  # with checkpointing ViT attention, ViT MLP and RNN block run again in the backward
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7, msg=k)
    with pytest.raises(KeyError, match="known parts: vision, projector, rnn"):
        tiny(grad_checkpoint=["llm"])


# -- LoRA ----------------------------------------------------------------------------------------------------------
LORA = dict(r=4, alpha=8, target_modules=["att.key", "att.value", "ffn.key"])


def test_lora_trains_only_the_adapters_and_survives_save_and_load(tmp_path):
    # a LoRA stage starting from a stage without adapters: its weights become the base layers
    plain = shifted(tmp_path / "plain.pt")
    m = tiny(lora=LORA, freeze=["vision", "projector"], init_from=str(tmp_path / "plain.pt"))
    assert torch.equal(m.model.rnn.blocks[0].att.key.base_layer.weight, plain["rnn.blocks.0.att.key.weight"])
    assert torch.equal(m.model.rnn.blocks[0].att.receptance.weight, plain["rnn.blocks.0.att.receptance.weight"])
    trainable = [k for k, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert {k.split(".")[-4] for k in trainable} == {"key", "value"}  # att.key, att.value, ffn.key
    before = {k: v.clone() for k, v in m.state_dict().items()}
    t = trainer(max_steps=2, default_root_dir=tmp_path)
    t.fit(m, loader(ToyVideoQA(8)))
    after = m.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    # B starts at zero: every adapter moved (each projection runs through its adapter, not only its base weight)
    lora_b = {k for k in after if "lora_B" in k}
    assert lora_b <= changed and len(lora_b) == 3 * 2

    t.save_checkpoint(tmp_path / "lora.ckpt")
    back = AuroraModule.load_from_checkpoint(tmp_path / "lora.ckpt", weights_only=True)
    assert all(torch.equal(after[k], v) for k, v in back.state_dict().items())
    batch = collate([ToyVideoQA()[i] for i in range(2)])
    m.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(m.model(batch["pixels"], batch["input_ids"], batch["labels"]).loss,
                           back.model(batch["pixels"], batch["input_ids"], batch["labels"]).loss)

    with pytest.raises(ValueError, match="holds LoRA adapters"):
        tiny(init_from=str(tmp_path / "lora.ckpt"))
    with pytest.raises(ValueError, match="match no linear layer.*att.receptance"):
        tiny(lora=dict(target_modules=["q_proj"]))


# -- non-finite losses ---------------------------------------------------------------------------------------------
class Snapshots(L.Callback):
    def __init__(self):
        self.params = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.params.append({k: p.detach().clone() for k, p in module.named_parameters()})


def test_nonfinite_skip_drops_that_update_and_counts_it(tmp_path):
    m, snaps = tiny(nonfinite="skip"), Snapshots()
    t = trainer(max_steps=4, callbacks=[snaps], default_root_dir=tmp_path)
    t.fit(m, loader(ToyVideoQA(8, nan_at=(2,))))  # batch 1 (step 1) holds a NaN video
    snaps.on_train_batch_start(t, m, None, None)
    p = snaps.params
    moved = [any(not torch.equal(p[s][k], p[s + 1][k]) for k in p[s]) for s in range(4)]
    assert moved == [True, False, True, True]
    assert all(torch.isfinite(v).all() for v in p[-1].values())
    assert m.nonfinite_steps == 1 and t.global_step == 4
    assert t.callback_metrics["train/nonfinite_steps"] == 1


def test_nonfinite_halt_names_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at step 1 \(epoch 0, batch 1\)"):
        trainer(max_steps=4, default_root_dir=tmp_path).fit(tiny(), loader(ToyVideoQA(8, nan_at=(3,))))


# -- checkpoints: atomic writes, kill and resume -----------------------------------------------------------------
def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path):
    from aurora.train.callbacks import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    (tmp_path / ".last.ckpt.tmp999").write_bytes(b"half a checkpoint")  # left by a killed writer

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while writing")

    with pytest.raises(RuntimeError, match="boom"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def _tiny_recipe(tmp: Path, train: int = 64, test: int = 0, **trainer_over) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 60, "log_every_n_steps": 1,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "default_root_dir": str(tmp / "run"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp / "run")}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp / "run/ckpt"), "every_n_train_steps": 3, "save_top_k": -1,
                               "save_last": True}},
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
            ],
        } | trainer_over,
        "model": {"vision": VISION, "rnn": RNN | {"vocab_size": 65536, "n_layer": 1}, "merge": None,
                  "lr": 1e-3, "warmup_ratio": 0.1, "min_lr_ratio": 0.1, "schedule": "cosine"},
        "data": {"data_dir": str(tmp / "data"), "synthetic": {"train": train, "val": 0, "test": test, "frames": 2, "size": 16},
                 "num_frames": 2, "image_size": 16, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 0},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(version_dir: Path) -> list[dict]:
    import csv

    with open(version_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_run_resumes_from_last_with_step_schedule_and_intact_checkpoints(tmp_path):
    cfg = _tiny_recipe(tmp_path)
    ckpts = tmp_path / "run/ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "aurora.cli", "fit", "--config", str(cfg)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (ckpts / "epoch=0-step=6.ckpt").exists():
        if proc.poll() is not None:
            pytest.fail("the run ended before it was killed:\n" + proc.stdout.read().decode()[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 240 s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: 32 batches per epoch, max_steps 60
    proc.wait()
    proc.stdout.close()
    killed_at = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]
    assert 3 <= killed_at < 32
    for p in ckpts.glob("*.ckpt"):  # whatever moment the kill hit, every checkpoint file is whole
        torch.load(p, weights_only=True, map_location="cpu")

    r = subprocess.run([sys.executable, "-m", "aurora.cli", "fit", "--config", str(cfg), "--ckpt_path", "last"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 60 and last["optimizer_states"][0]["state"]
    for p in ckpts.glob("*.ckpt"):
        torch.load(p, weights_only=True, map_location="cpu")
    assert not list(ckpts.glob(".*tmp*"))
    # the resumed run logs from the checkpoint's step on, with the schedule where it was (not a new warm-up)
    rows = _metrics(tmp_path / "run/lightning_logs/version_1")
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    lrs = {int(r["step"]): float(r[lr_key]) for r in rows if r.get(lr_key)}
    assert min(lrs) == killed_at and max(lrs) == 59
    f = lr_schedule("cosine", 60, 0.1, 0.1)
    for step, lr in lrs.items():
        assert lr == pytest.approx(1e-3 * f(step), rel=1e-6), step


# -- distributed: 2 processes on CPU (gloo) ------------------------------------------------------------------------
def _worker(strategy: str, devices: int, batch: int, out: str) -> None:
    """Train the tiny model 4 steps and write the (process-synced) loss curve; rank 0 writes ``out``."""
    L.seed_everything(0)
    module = tiny(lr=3e-2)
    if strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            # in order (Lightning's own distributed sampler shuffles): process r reads samples r, r + 2, ...
            from torch.utils.data import DistributedSampler

            t, ds = self.trainer, ToyVideoQA(16)
            sampler = DistributedSampler(ds, num_replicas=t.world_size, rank=t.global_rank, shuffle=False)
            return DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=collate)

    t = trainer(devices=devices, strategy=strategy, max_steps=4, callbacks=[Record()], use_distributed_sampler=False)
    t.fit(module, datamodule=Data())
    if t.is_global_zero:
        Path(out).write_text(json.dumps({"losses": losses, "world_size": t.world_size}))


def _run_worker(tmp: Path, strategy: str, devices: int, batch: int) -> dict:
    out = tmp / f"{strategy}{devices}.json"
    r = subprocess.run([sys.executable, __file__, strategy, str(devices), str(batch), str(out)], cwd=tmp, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The reference curve: one process, batch 4."""
    return _run_worker(tmp_path_factory.mktemp("one"), "auto", 1, 4)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_doubled_batch(tmp_path, one_process):
    one = one_process
    two = _run_worker(tmp_path, "ddp", 2, 2)
    assert two["world_size"] == 2 and len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"][0] != one["losses"][-1]  # it trained
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)


@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process_with_the_doubled_batch(tmp_path, one_process):
    one = one_process
    two = _run_worker(tmp_path, "fsdp", 2, 2)
    assert two["world_size"] == 2
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)


# -- MLflow --------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a sqlite backend in a temp dir; skipped if it is not up in 90 s."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.skip(f"mlflow server exited at start: {proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.skip("mlflow server did not answer /health within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()


def _check_mlflow_run(uri: str, tmp: Path) -> None:
    """A 3-step `aurora fit` logs the flattened recipe (once: no bare ``lr`` beside ``model/lr``), metrics with the
    learning rate (the CLI adds a monitor: this recipe has none), config.yaml and the loss-curve plot; an `aurora
    test` of its checkpoint is a run of its own, named and tagged for its stage and nested under the fit's run."""
    from mlflow.tracking import MlflowClient

    cfg = _tiny_recipe(tmp, train=8, test=2, max_steps=3,
                       logger={"class_path": "aurora.train.tracking.MLFlowLogger",
                               "init_args": {"experiment_name": "scale", "tracking_uri": uri}})
    recipe = yaml.safe_load(cfg.read_text())
    recipe["trainer"]["callbacks"] = recipe["trainer"]["callbacks"][:1]  # no LearningRateMonitor
    cfg.write_text(yaml.safe_dump(recipe))
    cli("--config", cfg)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scale").experiment_id])
    params = run.data.params
    assert params["model/rnn/name"] == "rwkv6" and params["trainer/max_steps"] == "3"
    assert params["data/synthetic/train"] == "8" and params["trainer/callbacks/0/init_args/every_n_train_steps"] == "3"
    assert "model/lr" in params and not {"lr", "batch_size", "_instantiator"} & set(params)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3
    assert len(client.get_metric_history(run.info.run_id, "lr-AdamW/rnn")) == 3
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss_curve.png"]
    png = client.download_artifacts(run.info.run_id, "plots/loss_curve.png", str(tmp))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.info.run_name == "run-fit" and run.data.tags["aurora.stage"] == "fit"

    from aurora.cli import main

    assert main(["test", "--config", str(cfg), f"--ckpt_path={tmp / 'run/ckpt/last.ckpt'}"]) == 0
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("scale").experiment_id])}
    assert set(runs) == {"run-fit", "run-test"}
    test = runs["run-test"]
    assert test.data.tags["aurora.stage"] == "test" and "test/accuracy" in test.data.metrics
    assert test.data.tags["aurora.train_run_id"] == test.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert "train/loss" not in test.data.metrics


def test_mlflow_sqlite_run_holds_recipe_metrics_config_and_plot(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the database's folder: artifacts still go beside the database
    _check_mlflow_run(f"sqlite:///{tmp_path}/runs/mlflow.db", tmp_path)
    assert (tmp_path / "runs/mlartifacts").is_dir() and not (tmp_path / "elsewhere/mlruns").exists()


@pytest.mark.slow
def test_mlflow_server_run_holds_recipe_metrics_config_and_plot(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.chdir(tmp_path)
    _check_mlflow_run(mlflow_server, tmp_path)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
