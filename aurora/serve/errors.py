"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that fits.

| status | type | when |
|---|---|---|
| 400 | ``invalid_request_error`` | not JSON, a bad message shape, no video, a video that cannot be fetched or decoded |
| 403 | ``permission_error`` | a local path outside ``--video-root``, local paths or remote videos turned off |
| 404 | ``not_found_error`` | an unknown model (code ``model_not_found``) or route |
| 413 | ``invalid_request_error`` | a video (or body) over the size limit (code ``video_too_large``) |
| 422 | ``invalid_request_error`` | a parameter out of range (temperature < 0, max_tokens <= 0, ...) |
| 429 | ``rate_limit_error`` | the request queue is full |
| 500 | ``server_error`` | anything unexpected: logged on the server, the client gets one line, no traceback |
"""
from __future__ import annotations

from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """A request the server refuses: ``status``, a one-line ``message``, the ``param`` at fault, a ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = int(status), " ".join(str(message).split()), param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error" if status < 500
                                                             else "server_error"),
                      "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def bad_param(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(422, message, param, code)
