from . import rwkv6  # noqa: F401  (registers the backbones)
