from . import gated_deltanet, gla, mamba, mamba2, rwkv6, rwkv7, transformer  # noqa: F401  (registers the backbones)
