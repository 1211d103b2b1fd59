"""``aurora bench rnn --peers``: our backbones and kernels against the implementations a user could pick instead.

Side by side in ONE process (so machine load hits both alike), same shapes, same weights (each peer loads the
checkpoint our model writes, or we load the peer's), outputs checked equal within fp32 tolerance before anything is
timed; timed runs interleave ours and the peer's (``--repeat`` rounds, median). Pairs (each only where the peer
package imports; otherwise recorded as skipped with the reason):

* ``rwkv6`` / ``rwkv7`` prefill: BlinkDL's ``rwkv`` package (``RWKV(strategy="cpu fp32")``, official ``.pth`` our
  model's state dict is; ``RWKV_CUDA_ON=0``; JIT off and on: the package reads ``RWKV_JIT_ON`` at import, so it is
  imported once per setting), logits compared.
* ``mamba`` / ``mamba2`` prefill: transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (their PyTorch paths
  on CPU), saved with ``save_pretrained`` and loaded by our ``from_checkpoint``.
* ``transformer`` prefill and decode (ms/token over ``--peer-steps`` tokens after a T-token prefill): transformers'
  ``LlamaForCausalLM`` with SDPA attention, loaded from the checkpoint our baseline writes; its default cache.
* ``wkv6`` / ``gla`` / ``gated_delta`` ops (H 8, K = V = 64): fla's pure-PyTorch ``naive_chunk_rwkv6`` /
  ``naive_recurrent_gla`` / ``naive_chunk_gated_delta_rule`` (gated_deltanet's kernel; the faster of fla's two
  naive forms, chunk 64).

The GEMM rate is measured in the same interleaved rounds as each pair (fp32 1024^3 ``torch.mm``, median, GFLOP/s;
on a loaded machine a rate measured once at the start drifts by 2x) and every form gets its share of it: achieved FLOP/s / GEMM FLOP/s, with FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` over
one forward (2·m·n·k per matrix product, attention included; elementwise work, exps and the like count 0), i.e. the
matrix-product work the form must do, not what it wastes.
"""
from __future__ import annotations

import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

PEERS = ("rwkv6", "rwkv7", "mamba", "mamba2", "transformer", "wkv6", "gla", "gated_delta")


def gemm_rate(repeat: int = 5) -> float:
    """fp32 1024^3 ``torch.mm`` in GFLOP/s (median)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 1024 ** 3 / statistics.median(ts) / 1e9


def matmul_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _close(a, b, tol: float) -> float:
    """Relative max error |a - b| / max|b|; raises if above ``tol`` (nothing is timed for a pair that differs)."""
    a, b = a.float(), b.float()
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    if not err <= tol:
        raise AssertionError(f"outputs differ: relative max error {err:.2e} > {tol:g}")
    return err


def _interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def _import_rwkv(jit: bool, v7: bool):
    """A fresh copy of ``rwkv.model`` under the given switches (it reads them at import time)."""
    import torch

    os.environ["RWKV_JIT_ON"] = "1" if jit else "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ["RWKV_V7_ON"] = "1" if v7 else "0"
    for name in [m for m in sys.modules if m == "rwkv.model" or m.startswith("rwkv.model.")]:
        del sys.modules[name]
    autocast = torch._C._jit_set_autocast_mode(True)  # the package switches it off globally; restored here
    try:
        return importlib.import_module("rwkv.model").RWKV
    finally:
        torch._C._jit_set_autocast_mode(autocast)


def _rwkv_pair(name: str, t: int, d: int, n_layer: int, vocab: int, tmp: Path, jit: bool):
    import torch

    from aurora.registry import RNN

    torch.manual_seed(0)
    ours = RNN.build({"name": name, "vocab_size": vocab, "d_model": d, "n_layer": n_layer}).eval()
    with torch.no_grad():  # official init zeroes some projections: perturb so every path matters
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp / f"{name}.pth"
    if name == "rwkv7":
        from aurora.components.rnn.rwkv7 import official_state_dict
        sd = official_state_dict(ours)
    else:
        sd = {k: v.clone() for k, v in ours.state_dict().items()}
    torch.save(sd, path)
    RWKV = _import_rwkv(jit, name == "rwkv7")
    quiet = {} if name == "rwkv7" else {"verbose": False}  # its x070 class takes no verbose argument
    ref = RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32", **quiet)
    tokens = torch.randint(0, vocab, (t,), generator=torch.Generator().manual_seed(1))

    def run_ours():
        return ours.logits(ours(ours.embed(tokens[None]))[0])[0]

    def run_peer():
        return ref.forward(tokens.tolist(), None, full_output=True)[0]

    return run_ours, run_peer, 1e-3


def _hf_ssm_pair(name: str, t: int, d: int, n_layer: int, vocab: int, tmp: Path):
    import torch
    import transformers

    from aurora.registry import RNN

    torch.manual_seed(0)
    if name == "mamba":
        cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layer)
        ref = transformers.MambaForCausalLM(cfg)
    else:
        cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layer,
                                        head_dim=64, num_heads=2 * d // 64, n_groups=1, chunk_size=256)
        ref = transformers.Mamba2ForCausalLM(cfg)
    ref = ref.eval()
    ref.save_pretrained(tmp / name)
    ours = RNN.get(name).from_checkpoint(tmp / name).eval()
    ids = torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(1))
    return (lambda: ours.logits(ours(ours.embed(ids))[0])), (lambda: ref(ids).logits), 1e-3


def _transformer_pairs(t: int, d: int, n_layer: int, vocab: int, tmp: Path, steps: int):
    import torch
    import transformers

    from aurora.components.rnn.transformer import Transformer, save_hf_checkpoint

    torch.manual_seed(0)
    ours = Transformer(vocab_size=vocab, d_model=d, n_layer=n_layer, n_head=max(1, d // 64)).eval()
    save_hf_checkpoint(ours, tmp / "llama")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp / "llama", attn_implementation="sdpa").eval()
    ids = torch.randint(0, vocab, (1, t + steps), generator=torch.Generator().manual_seed(1))
    prefill = (lambda: ours.logits(ours(ours.embed(ids[:, :t]))[0]), lambda: ref(ids[:, :t]).logits, 1e-3)

    def decode_ours():
        h, s = ours(ours.embed(ids[:, :t]))
        outs = []
        t0 = time.perf_counter()
        for i in range(t, t + steps):
            h, s = ours(ours.embed(ids[:, i:i + 1]), s)
            outs.append(ours.logits(h))
        return torch.cat(outs, 1), time.perf_counter() - t0

    def decode_peer():
        out = ref(ids[:, :t], use_cache=True)
        cache, outs = out.past_key_values, []
        t0 = time.perf_counter()
        for i in range(t, t + steps):
            out = ref(ids[:, i:i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            outs.append(out.logits)
        return torch.cat(outs, 1), time.perf_counter() - t0

    return prefill, (decode_ours, decode_peer)


def _op_pair(name: str, t: int, h: int = 8, n: int = 64):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(1, t, h, n, generator=g) for _ in range(3))
    if name == "wkv6":
        from fla.ops.rwkv6.chunk_naive import naive_chunk_rwkv6

        from aurora.kernels.rwkv6 import wkv6
        w = -torch.exp(torch.randn(1, t, h, n, generator=g) - 1)
        u = torch.randn(h, n, generator=g)
        hf = lambda x: x.transpose(1, 2).contiguous()  # fla's naive form is head-first  # noqa: E731
        rh, kh, vh, wh = map(hf, (r, k, v, w))
        return (lambda: wkv6(r, k, v, w, u, backend="chunked")[0]), \
            (lambda: naive_chunk_rwkv6(rh, kh, vh, wh, u, chunk_size=32).transpose(1, 2)), 1e-3
    if name == "gated_delta":
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule

        from aurora.kernels.gated_delta import gated_delta
        q, k = (F.normalize(x, dim=-1) for x in (r, k))  # as gated_deltanet's layer makes them
        gd = -F.softplus(torch.randn(1, t, h, generator=g)) / 4
        beta = torch.sigmoid(torch.randn(1, t, h, generator=g))
        return (lambda: gated_delta(q, k, v, gd, beta, backend="chunked")[0]), \
            (lambda: naive_chunk_gated_delta_rule(q, k, v, gd, beta, chunk_size=64)[0]), 1e-3
    from fla.ops.gla.naive import naive_recurrent_gla

    from aurora.kernels.gla import gla
    gk = F.logsigmoid(torch.randn(1, t, h, n, generator=g)) / 16
    return (lambda: gla(r, k, v, gk, backend="chunked")[0]), \
        (lambda: naive_recurrent_gla(r, k, v, gk, output_final_state=False)[0]), 1e-3


def run_peers(names: list[str], lengths: list[int], threads: list[int], d: int, n_layer: int, vocab: int,
              repeat: int, steps: int, log=print, attention_max_t: int | None = None) -> dict[str, Any]:
    """Every pair at every T and thread count; ``attention_max_t``: the transformer pair (softmax attention,
    quadratic in T) is recorded as skipped, with the reason, above this T (None: no limit)."""
    import torch

    records = []
    with tempfile.TemporaryDirectory() as tmpdir, torch.no_grad():
        tmp = Path(tmpdir)
        for th in threads:
            torch.set_num_threads(th)
            gemm = gemm_rate()
            log(f"[peers] {th} thread(s): GEMM {gemm:.1f} GFLOP/s")
            for name in names:
                for t in lengths:
                    variants = [("rwkv (JIT off)", False), ("rwkv (JIT on)", True)] if name in ("rwkv6", "rwkv7") \
                        else [(None, None)]
                    for label, jit in variants:
                        rec = dict(pair=name, T=t, threads=th, gemm_gflops=gemm, d_model=d, n_layer=n_layer)
                        if name == "transformer" and attention_max_t is not None and t > attention_max_t:
                            rec.update(status="skipped", reason=f"T {t} > --peer-attention-max-t {attention_max_t} "
                                                                "(softmax attention is quadratic in T)")
                            log(f"[peers] {name} T={t} {th}t: skipped (T > {attention_max_t})")
                            records.append(rec)
                            continue
                        try:
                            rec.update(_measure(name, t, d, n_layer, vocab, tmp, jit, label, repeat, steps, gemm))
                            rec["status"] = "ok"
                        except Exception as e:  # a missing peer or a mismatch is recorded, the rest goes on
                            rec.update(status="skipped", reason=f"{type(e).__name__}: {e}"[:300])
                        log(f"[peers] {name} T={t} {th}t {rec.get('peer', '')}: {rec['status']}")
                        records.append(rec)
    return {"torch": torch.__version__, "records": records}


def _measure(name, t, d, n_layer, vocab, tmp, jit, label, repeat, steps, gemm) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name in ("rwkv6", "rwkv7"):
        ours, peer, tol = _rwkv_pair(name, t, d, n_layer, vocab, tmp, jit)
        out["peer"] = label
    elif name in ("mamba", "mamba2"):
        ours, peer, tol = _hf_ssm_pair(name, t, d, n_layer, vocab, tmp)
        out["peer"] = f"transformers {'Mamba' if name == 'mamba' else 'Mamba2'}ForCausalLM"
    elif name == "transformer":
        (ours, peer, tol), (dec_ours, dec_peer) = _transformer_pairs(t, d, n_layer, vocab, tmp, steps)
        out["peer"] = "transformers Llama (SDPA)"
        ya, ta = dec_ours()
        yb, tb = dec_peer()
        out["decode_err"] = _close(ya, yb, 1e-3)
        for _ in range(max(0, repeat - 1)):
            ta, tb = min(ta, dec_ours()[1]), min(tb, dec_peer()[1])
        out.update(decode_ms_ours=1e3 * ta / steps, decode_ms_peer=1e3 * tb / steps,
                   decode_speedup=tb / ta)
    else:
        ours, peer, tol = _op_pair(name, t)
        out["peer"] = {"wkv6": "fla naive_chunk_rwkv6", "gla": "fla naive_recurrent_gla",
                       "gated_delta": "fla naive_chunk_gated_delta_rule"}[name]
    out["max_rel_err"] = _close(ours(), peer(), tol)
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = _interleaved({"ours": ours, "peer": peer, "gemm": lambda: a @ b}, repeat)
    gemm = 2 * 1024 ** 3 / times["gemm"] / 1e9  # in the same rounds as the pair: the same machine load
    out["gemm_gflops"] = gemm
    flops = matmul_flops(ours)
    out.update(ours_s=times["ours"], peer_s=times["peer"], speedup=times["peer"] / times["ours"],
               ours_tok_s=t / times["ours"], peer_tok_s=t / times["peer"], matmul_flops=flops,
               gemm_share=flops / times["ours"] / 1e9 / gemm)
    return out


def format_peers(payload: dict[str, Any]) -> str:
    head = ["pair", "peer", "threads", "T", "ours tok/s", "peer tok/s", "peer time / ours", "ours % of GEMM",
            "decode ms/tok ours vs peer", "max rel err / status"]
    rows = []
    for r in payload["records"]:
        ok = r["status"] == "ok"
        dec = (f"{r['decode_ms_ours']:.2f} vs {r['decode_ms_peer']:.2f}" if ok and "decode_ms_ours" in r else "-")
        rows.append([r["pair"], str(r.get("peer", "-")), str(r["threads"]), str(r["T"]),
                     f"{r['ours_tok_s']:,.0f}" if ok else "-", f"{r['peer_tok_s']:,.0f}" if ok else "-",
                     f"{r['speedup']:.2f}x" if ok else "-", f"{100 * r['gemm_share']:.0f}%" if ok else "-", dec,
                     f"{r['max_rel_err']:.1e}" if ok else r["reason"]])
    width = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head) - 1)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, width)) + "  " + row[-1]  # noqa: E731
    gemm = {}
    for r in payload["records"]:
        gemm.setdefault(r["threads"], []).append(r["gemm_gflops"])
    return "\n".join([fmt(head), *map(fmt, rows)] + [
        f"GEMM (1024^3 fp32 mm), {th} thread(s): {min(g):.1f} to {max(g):.1f} GFLOP/s over the pairs' rounds"
        for th, g in sorted(gemm.items())])


def write_peers_plot(payload: dict[str, Any], path: str | Path) -> None:
    """Peer time / ours per pair and T (one bar group per pair, one panel per thread count)."""
    from aurora.io import pyplot, save_figure

    plt = pyplot("aurora bench --peers")
    recs = [r for r in payload["records"] if r["status"] == "ok"]
    threads = sorted({r["threads"] for r in recs}) or [1]
    fig, axes = plt.subplots(1, len(threads), figsize=(7 * len(threads), 4.5), squeeze=False)
    for ax, th in zip(axes[0], threads):
        rs = [r for r in recs if r["threads"] == th]
        labels = [f"{r['pair']}\n{r['peer'].replace('transformers ', '')}\nT={r['T']}" for r in rs]
        ax.bar(range(len(rs)), [r["speedup"] for r in rs])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="g", lw=0.8, ls="--")
        ax.set_xticks(range(len(rs)), labels, fontsize=6, rotation=90)
        ax.set_ylabel("peer time / ours (higher: ours faster)")
        ax.set_title(f"{th} thread(s)")
    fig.tight_layout()
    save_figure(fig, path)
