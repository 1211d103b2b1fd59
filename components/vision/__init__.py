from . import clip, openclip_vit, siglip  # noqa: F401  (registers the vision encoders)
