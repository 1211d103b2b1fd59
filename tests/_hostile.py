"""Shared helpers of the hostile-input tests: a pickle that would leave a marker file if it ever ran, and a
file server on 127.0.0.1 that stops when the block ends."""
from __future__ import annotations

import functools
import http.server
import pathlib
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class Payload:
    """Unpickling this calls ``Path(marker).touch()``: the marker file proves that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_payload_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a Lightning checkpoint whose hyper_parameters hold :class:`Payload`."""
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)}, "pytorch-lightning_version": "2.6"},
               path)
    return path


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving ``folder`` from a thread; shut down when the block ends."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # no request lines on stderr
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
