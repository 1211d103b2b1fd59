from . import gla, mamba, mamba2, rwkv6, rwkv7  # noqa: F401  (registers the backbones)
