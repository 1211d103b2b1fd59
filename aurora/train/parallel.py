"""Scaling a model over devices and memory: FSDP2 sharding through Lightning's ``ModelParallelStrategy`` and
gradient checkpointing (every backbone and merging ViT has a ``grad_checkpoint`` switch)."""
from __future__ import annotations

from torch import nn


def shard(model: nn.Module, mesh) -> None:
    """Shard an :class:`~aurora.model.AuroraModel` with FSDP2 over ``mesh``: each language-model block is one unit,
    the vision encoder one unit (its layer loop calls sub-modules of the layers, so the layers cannot be units of
    their own), the rest (projector, embeddings, head) the root unit."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # already sharded (fit, then test in the same process)
        return
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise NotImplementedError(
            f"tensor parallelism is not implemented (tensor_parallel_size={mesh['tensor_parallel'].size()}); use "
            "ModelParallelStrategy(data_parallel_size=<number of processes>, tensor_parallel_size=1)"
        )
    dp = mesh["data_parallel"] if "data_parallel" in names else mesh
    for block in block_list(model.rnn):
        fully_shard(block, mesh=dp)
    fully_shard(model.vision, mesh=dp)
    fully_shard(model, mesh=dp)


def enable_grad_checkpoint(module: nn.Module, part: str) -> None:
    """Recompute ``part``'s blocks in the backward pass: every backbone and merging ViT has a ``grad_checkpoint``
    switch."""
    if hasattr(module, "grad_checkpoint"):
        module.grad_checkpoint = True
        return
    raise ValueError(f"{part} ({type(module).__name__}) has no gradient checkpointing; parts that have it: rnn "
                     "(every backbone), vision (the merging ViTs)")


def block_list(rnn: nn.Module) -> list[nn.Module]:
    """The language model's repeated blocks: the ``nn.ModuleList`` with one entry per layer."""
    n = getattr(rnn, "n_layer", None)
    for _, m in rnn.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return list(m)
    raise ValueError(f"cannot find the {n} blocks of {type(rnn).__name__} to shard")

