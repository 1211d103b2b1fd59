from . import mlp  # noqa: F401  (registers the projectors)
