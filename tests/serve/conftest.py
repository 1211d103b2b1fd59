"""The serving tests' shared pieces: one tiny model (a Lightning-layout checkpoint, tests/infer/servefix.py), a
test video, and a live server: the app under uvicorn in a thread on a free port of 127.0.0.1, beside a plain
HTTP file server that serves the video at /v.mp4."""
from __future__ import annotations

import http.server
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from infer.servefix import video_bytes, write_checkpoint


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def model(ckpt):
    from aurora import Aurora

    torch.set_num_threads(1)  # tiny model on a busy machine
    return Aurora.from_pretrained(ckpt, device="cpu")


@pytest.fixture(scope="session")
def video():
    return video_bytes(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def real_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        t.join(10)


@contextmanager
def file_server(data: bytes):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/v.mp4":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def live(model, video):
    """(server base URL, file server base URL)."""
    pytest.importorskip("uvicorn", reason="aurora serve needs uvicorn (pip install 'aurora-long[serve]')")
    from aurora.serve.server import create_app

    with real_server(create_app(model, name="tiny", download_timeout=10)) as base, file_server(video) as files:
        yield base, files
