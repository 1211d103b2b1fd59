"""Inference: the streaming engine, `aurora ask`, the Python API and the one reader of a run's recipe."""
