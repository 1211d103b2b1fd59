"""A tiny checkpoint in AuroraCap's xtuner layout, as `weili-0234/AuroraLong-RWKV-VID-2B-xtuner` has it (file names,
config fields and tensor names; tiny sizes): written by the tests, since no hub is reachable. The remote-code files
the real export ships are written as code that leaves a marker file if it is ever executed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

# sizes: SigLIP 32 wide, 2 layers (feature_layer -2 runs one), 32x32 frames of 8x8 patches; RWKV-6 32 wide,
# 2 layers, head 16, the World vocabulary; the LoRA sizes are modeling_rwkv6.py's fixed 32 / 64
VIS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)
LM = dict(hidden_size=32, num_hidden_layers=2, head_size=16, vocab_size=65536)
MARKER = "EXECUTED"


def poison(folder: Path, name: str) -> None:
    (folder / name).write_text(f"open({str(folder / MARKER)!r}, 'w').write('{name}')\n"
                               "raise SystemExit('remote code must never run')\n")


def rwkv_hf_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Rwkv6ForCausalLM tensors (rwkv.blocks.N...), random but in sensible ranges, under the names and shapes of
    modeling_rwkv6.py (fp16 as the export, time_decay* in fp32 as its _keep_in_fp32_modules)."""
    g = torch.Generator().manual_seed(seed)
    c, L, n, v = LM["hidden_size"], LM["num_hidden_layers"], LM["head_size"], LM["vocab_size"]
    h, f = c // n, int(c * 3.5) // 32 * 32

    def r(*shape, scale=0.3, base=0.0):
        return base + scale * torch.randn(*shape, generator=g)

    sd = {"rwkv.embeddings.weight": r(v, c), "rwkv.ln_out.weight": r(c, base=1.0, scale=0.1),
          "rwkv.ln_out.bias": r(c, scale=0.1), "head.weight": r(v, c, scale=0.2)}
    for i in range(L):
        b = f"rwkv.blocks.{i}."
        if i == 0:
            sd[b + "pre_ln.weight"], sd[b + "pre_ln.bias"] = r(c, base=1.0, scale=0.1), r(c, scale=0.1)
        for ln in ("ln1", "ln2"):
            sd[b + f"{ln}.weight"], sd[b + f"{ln}.bias"] = r(c, base=1.0, scale=0.1), r(c, scale=0.1)
        a = b + "attention."
        for m in "xwkvrg":
            sd[a + f"time_maa_{m}"] = torch.rand(1, 1, c, generator=g)
        sd[a + "time_maa_w1"], sd[a + "time_maa_w2"] = r(c, 32 * 5, scale=0.1), r(5, 32, c, scale=0.1)
        sd[a + "time_decay"] = r(1, 1, c, base=-1.0, scale=0.5)
        sd[a + "time_decay_w1"], sd[a + "time_decay_w2"] = r(c, 64, scale=0.1), r(64, c, scale=0.1)
        sd[a + "time_faaaa"] = r(h, n, scale=0.5)
        for lin in ("receptance", "key", "value", "gate"):
            sd[a + f"{lin}.weight"] = r(c, c, scale=c ** -0.5)
        sd[a + "output.weight"] = r(c, c, scale=c ** -0.5)
        sd[a + "ln_x.weight"], sd[a + "ln_x.bias"] = r(c, base=1.0, scale=0.1), r(c, scale=0.1)
        fw = b + "feed_forward."
        sd[fw + "time_maa_k"] = torch.rand(1, 1, c, generator=g)
        sd[fw + "time_maa_r"] = torch.rand(1, 1, c, generator=g)
        sd[fw + "key.weight"], sd[fw + "value.weight"] = r(f, c, scale=c ** -0.5), r(c, f, scale=f ** -0.5)
        sd[fw + "receptance.weight"] = r(c, c, scale=c ** -0.5)
    return {k: x.float() if "time_decay" in k else x.half() for k, x in sd.items()}


def write_xtuner(root: Path, seed: int = 0) -> Path:
    """ROOT in the layout of the released model; returns ROOT."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from aurora.data.prompt import world_vocab_file

    root.mkdir(parents=True, exist_ok=True)
    c, L = LM["hidden_size"], LM["num_hidden_layers"]
    (root / "config.json").write_text(json.dumps({
        "_name_or_path": "/tmp/auroralong/iter_final.hf", "architectures": ["Rwkv6ForCausalLM"],
        "attention_hidden_size": c, "auto_map": {"AutoConfig": "configuration_rwkv6.Rwkv6Config",
                                                 "AutoModelForCausalLM": "modeling_rwkv6.Rwkv6ForCausalLM"},
        "bos_token_id": 0, "eos_token_id": 0, "head_size": LM["head_size"], "head_size_divisor": 8,
        "hidden_size": c, "intermediate_size": None, "layer_norm_epsilon": 1e-05, "model_type": "rwkv6",
        "num_attention_heads": c // LM["head_size"], "num_hidden_layers": L, "rescale_every": 6,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.45.0", "use_cache": True,
        "vocab_size": LM["vocab_size"]}, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 0,
                                                             "transformers_version": "4.45.0"}))
    (root / "added_tokens.json").write_text('{\n  "<s>": 0\n}')
    (root / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "<s>",
                                                              "pad_token": "<s>", "unk_token": "<s>"}))
    (root / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [
        "hf_rwkv_tokenizer.RwkvTokenizer", None]}, "bos_token": "<s>", "eos_token": "<s>",
        "tokenizer_class": "RwkvTokenizer"}))
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    shutil.copyfile(world_vocab_file(), root / "rwkv_vocab_v20230424.txt")
    for name in ("configuration_rwkv6.py", "modeling_rwkv6.py", "hf_rwkv_tokenizer.py"):
        poison(root, name)
    torch.save(rwkv_hf_state_dict(seed), root / "pytorch_model.bin")

    vis = root / "visual_encoder"
    vis.mkdir(exist_ok=True)
    torch.manual_seed(seed + 1)
    cfg = SiglipVisionConfig(**VIS)
    hf = SiglipVisionModel(cfg)
    with torch.no_grad():  # not the init's zeros / ones: every tensor carries information
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # the names as transformers 4.x saves SiglipVisionModel (vision_model.*; 5.x dropped the nesting)
    sd = {(k if k.startswith("vision_model.") else "vision_model." + k): x.half() for k, x in hf.state_dict().items()}
    sd["pos_emb"] = sd["vision_model.embeddings.position_embedding.weight"]  # AuroraSigEncoder's alias
    torch.save(sd, vis / "pytorch_model.bin")
    (vis / "config.json").write_text(json.dumps({
        "_name_or_path": "/tmp/auroralong/iter_final.hf/visual_encoder", "architectures": ["AuroraSigEncoder"],
        "attention_dropout": 0.0, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model", "num_channels": 3, "torch_dtype": "float16",
        "transformers_version": "4.45.0", **VIS}, indent=2))
    (vis / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": VIS["image_size"], "width": VIS["image_size"]}}))

    proj = root / "projector"
    proj.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(seed + 2)
    d_in = VIS["hidden_size"]
    torch.save({"model.0.weight": 0.2 * torch.randn(c, d_in, generator=g),
                "model.0.bias": 0.1 * torch.randn(c, generator=g),
                "model.2.weight": 0.2 * torch.randn(c, c, generator=g),
                "model.2.bias": 0.1 * torch.randn(c, generator=g)}, proj / "pytorch_model.bin")
    (proj / "config.json").write_text(json.dumps({
        "architectures": ["ProjectorModel"], "auto_map": {"AutoConfig": "configuration_projector.ProjectorConfig",
                                                          "AutoModel": "modeling_projector.ProjectorModel"},
        "bias": True, "depth": 2, "hidden_act": "gelu", "llm_hidden_size": c, "model_type": "projector",
        "torch_dtype": "float32", "transformers_version": "4.45.0", "visual_hidden_size": d_in}, indent=2))
    for name in ("configuration_projector.py", "modeling_projector.py"):
        poison(proj, name)
    return root


def executed(root: Path) -> list[Path]:
    """Marker files a remote-code file left behind (none, if nothing was executed)."""
    return sorted(root.rglob(MARKER))
