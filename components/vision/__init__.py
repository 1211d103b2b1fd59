from . import clip, siglip  # noqa: F401  (registers the vision encoders)
