"""The serving wing: ``aurora serve``, an OpenAI-compatible chat completions server (FastAPI + uvicorn).

- :mod:`aurora.serve.server`: ``create_app(model, ...) -> FastAPI`` and ``serve_main`` (the command);
- :mod:`aurora.serve.request`: an OpenAI ``/v1/chat/completions`` body -> the question, the video and the decoding
  settings, every bad field a 400 or 422 naming it;
- :mod:`aurora.serve.sources`: the video of a content part (a path inside ``--video-root``, an http(s) URL, a
  base64 ``data:`` URL) as bytes, under a size limit;
- :mod:`aurora.serve.cache`: the states of videos already read, keyed by content hash and read settings, in a
  byte budget (LRU);
- :mod:`aurora.serve.errors`: OpenAI's error JSON with its status;
- :mod:`aurora.serve.model`: the model a serving command loads, its errors one line.

See docs/serving.md.
"""
