"""The JSON edge of the web app: responses, the errors routes raise, input checks.

Every answer is JSON (``{"error": "..."}`` for errors) except the dashboard's files and
``/metrics``. Input from paths, queries and bodies is checked here and refused with a
clear 400 (413 for a body too large), never a 500; an error names the parameter and
what it expects, and never repeats a body back.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request

__all__ = ["ApiError", "Json", "error", "job_key_param", "parse_flag", "parse_int",
           "parse_state", "read_json"]

_KEY = re.compile(r"[0-9a-fA-F]{64}")
_STATES = ", ".join(s.value for s in JobState)


class Json(JSONResponse):
    """A JSON response; values JSON cannot hold are written as strings."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode()


class ApiError(Exception):
    """An answer other than 200, raised by a route and turned into ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> Json:
    return Json({"error": message}, status_code=status, headers=dict(headers or {}))


def job_key_param(value: str) -> str:
    """A job key from a path or body: 64 hex digits, returned lower-case.

    Raises:
        ApiError: 400, for anything else.
    """
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise ApiError(400, "not a job key: a job key is 64 hex digits")
    return value.lower()


def parse_state(value: str | None) -> JobState | None:
    """``state=`` of a query: None when absent or empty.

    Raises:
        ApiError: 400, naming the states there are.
    """
    if value is None or value == "":
        return None
    try:
        return JobState(value.lower())
    except ValueError:
        raise ApiError(400, f"state: expected one of {_STATES}") from None


def parse_int(value: str | None, name: str, *, default: int | None, low: int,
              high: int) -> int | None:
    """An integer query parameter within [low, high]; ``default`` when absent.

    Raises:
        ApiError: 400, naming the parameter and its range.
    """
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,19}", value) or not low <= int(value) <= high:
        raise ApiError(400, f"{name}: expected a whole number from {low} to {high}")
    return int(value)


def parse_flag(value: str | None, name: str) -> bool:
    """A yes/no query parameter (1, true, yes / 0, false, no); absent is no.

    Raises:
        ApiError: 400.
    """
    if value is None:
        return False
    text = value.lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name}: expected 1 or 0")


async def read_json(request: Request, *, limit: int) -> Any:
    """The request's JSON body (None when empty), read at most ``limit`` bytes.

    Raises:
        ApiError: 413 beyond ``limit`` bytes (by Content-Length or as it streams), 400 when
            it is not JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body: not valid JSON") from None
