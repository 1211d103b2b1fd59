from . import order, pool, temporal, tome  # noqa: F401  (registers the orderings and merge strategies)
