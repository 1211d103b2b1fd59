from . import order, tome  # noqa: F401  (registers the orderings and merge strategies)
