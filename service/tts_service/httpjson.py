"""GET a URL and read its JSON answer: the one way the node (asking its peer's /ready) and the
receiver (probing the nodes) do it. Standard library only."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int | None, dict, str | None]:
    """(HTTP status or None, the JSON object answered or {}, error or None). An error status is an
    answer (its body says why, if it can be read); a server that cannot be reached, or a success whose
    body is not JSON, is no answer."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return None, {}, str(exc)[:200]
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        if 200 <= status < 300:
            return None, {}, f"{url} answered {status} with a body that is not JSON"
        body = {}
    return status, json_object(body), None


def json_object(value: object) -> dict:
    """The JSON object an answer holds, or {} for any other JSON value."""
    return value if isinstance(value, dict) else {}


def read_object(raw: bytes) -> dict:
    """An answer's body as a JSON object; {} when it is empty, not JSON, or not an object."""
    try:
        return json_object(json.loads(raw or b"{}"))
    except ValueError:
        return {}
