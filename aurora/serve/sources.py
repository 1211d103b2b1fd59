"""The video of a content part as bytes: a local path, an http(s) URL or a base64 ``data:`` URL.

- **A local path** (``/videos/a.mp4``, ``a.mp4`` relative to the root, or ``file:///videos/a.mp4``) is read only
  when the server was given a ``--video-root`` and the path, symlinks resolved, lies inside it; otherwise it is
  refused (403). Only regular files are read (never a FIFO or a device).
- **An http(s) URL** is downloaded with a timeout for the whole download and the size limit (the
  ``Content-Length`` is checked first, then the bytes as they arrive); redirects are followed only to http(s).
  ``--no-remote-videos`` refuses them (a server that fetches any URL it is given can be pointed at a private
  network: keep it on 127.0.0.1 or turn this off).
- **A data URL** (``data:video/mp4;base64,...``) or bare base64 (``input_video``'s ``data``) is decoded strictly;
  its size is checked before decoding.

Every refusal is an :class:`~aurora.serve.errors.APIError`: 400 (cannot fetch, not base64, no such file), 403 (a
path outside the root or local paths off), 413 (over ``max_bytes``).
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aurora.serve.errors import APIError, bad_request

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.S)
CHUNK = 1 << 20


@dataclass
class VideoFetcher:
    """Settings of where videos may come from (see the module docstring)."""

    max_bytes: int = 256 << 20
    video_root: str | os.PathLike | None = None
    allow_remote: bool = True
    timeout: float = 30.0

    def too_large(self, size: int | None = None, param: str = "messages") -> APIError:
        got = f" ({size} bytes)" if size is not None else ""
        return APIError(413, f"the video is over the size limit of {self.max_bytes} bytes{got}", param,
                        "video_too_large")

    def fetch(self, ref: str, param: str = "messages") -> bytes:
        """The bytes of the video ``ref`` names (a URL or a path)."""
        if not isinstance(ref, str) or not ref.strip():
            raise bad_request("the video part has no url (a path, an http(s) URL or a data: URL)", param)
        ref = ref.strip()
        scheme = urllib.parse.urlsplit(ref).scheme.lower() if "://" in ref or ref.startswith("data:") else ""
        if scheme == "data":
            return self.from_data_url(ref, param)
        if scheme in ("http", "https"):
            return self.download(ref, param)
        if scheme == "file":
            parts = urllib.parse.urlsplit(ref)
            if parts.netloc not in ("", "localhost"):
                raise bad_request(f"file URL of another host: {ref[:200]!r}", param)
            return self.read_local(urllib.parse.unquote(parts.path), param)
        if scheme:
            raise bad_request(f"unsupported video URL scheme {scheme!r}: give a path, an http(s) URL or a data: URL",
                              param, "unsupported_url")
        return self.read_local(ref, param)

    # -- data URLs and base64 -------------------------------------------------------------------------------
    def from_data_url(self, url: str, param: str) -> bytes:
        m = _DATA_URL.match(url)
        if m is None or ";base64" not in m.group("params").lower():
            raise bad_request("a data: URL video must be base64 (data:video/mp4;base64,...)", param, "invalid_video")
        return self.from_base64(m.group("data"), param)

    def from_base64(self, text: str, param: str) -> bytes:
        text = "".join(text.split())  # line breaks and spaces inside base64 are harmless
        if len(text) // 4 * 3 > self.max_bytes + 2:
            raise self.too_large(len(text) // 4 * 3, param)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise bad_request(f"the video's base64 data does not decode ({e})", param, "invalid_video") from None
        if len(data) > self.max_bytes:
            raise self.too_large(len(data), param)
        if not data:
            raise bad_request("the video's data is empty", param, "invalid_video")
        return data

    # -- local files ----------------------------------------------------------------------------------------
    def read_local(self, path: str, param: str) -> bytes:
        if self.video_root is None:
            raise APIError(403, "local video paths are off: start the server with --video-root DIR to serve the "
                           "videos inside DIR (or send the video as an http(s) or data: URL)", param,
                           "local_paths_disabled")
        root = Path(self.video_root).resolve()
        p = Path(path).expanduser()
        real = (p if p.is_absolute() else root / p).resolve()
        if not real.is_relative_to(root):
            raise APIError(403, f"video path {path!r} is outside the server's --video-root", param,
                           "video_outside_root")
        if not real.exists():
            raise bad_request(f"no video at {path!r} (inside --video-root)", param, "video_not_found")
        if not real.is_file():
            raise bad_request(f"video path {path!r} is not a regular file", param, "invalid_video")
        size = real.stat().st_size
        if size > self.max_bytes:
            raise self.too_large(size, param)
        with open(real, "rb") as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:  # grew while we looked
            raise self.too_large(None, param)
        return data

    # -- downloads ------------------------------------------------------------------------------------------
    def download(self, url: str, param: str) -> bytes:
        if not self.allow_remote:
            raise APIError(403, "remote videos are off on this server (--no-remote-videos): send a data: URL",
                           param, "remote_videos_disabled")
        opener = urllib.request.build_opener(_HttpOnlyRedirects)
        deadline = time.monotonic() + self.timeout
        short = url if len(url) <= 200 else url[:200] + "..."
        try:
            with opener.open(urllib.request.Request(url, headers={"User-Agent": "aurora-serve"}),
                             timeout=self.timeout) as r:
                length = r.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise self.too_large(int(length), param)
                parts, size = [], 0
                while True:
                    if time.monotonic() > deadline:
                        raise bad_request(f"downloading {short} took longer than {self.timeout:g} s", param,
                                          "video_download_failed")
                    block = r.read(CHUNK)
                    if not block:
                        break
                    size += len(block)
                    if size > self.max_bytes:
                        raise self.too_large(None, param)
                    parts.append(block)
        except APIError:
            raise
        except urllib.error.HTTPError as e:
            raise bad_request(f"cannot download the video {short}: HTTP {e.code} {e.reason}", param,
                              "video_download_failed") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise bad_request(f"cannot download the video {short}: {reason}", param,
                              "video_download_failed") from None
        data = b"".join(parts)
        if not data:
            raise bad_request(f"the video at {short} is empty", param, "invalid_video")
        return data


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL refused: {newurl[:200]}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
