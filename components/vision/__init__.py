from . import siglip  # noqa: F401  (registers the vision encoders)
