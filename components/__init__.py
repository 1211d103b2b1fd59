"""Swappable parts. Importing this package fills the registries in :mod:`aurora.registry`."""
from . import merge, projector, rnn, vision  # noqa: F401
