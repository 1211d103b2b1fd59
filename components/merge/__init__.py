from . import order, pool, tome  # noqa: F401  (registers the orderings and merge strategies)
