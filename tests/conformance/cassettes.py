"""Recorded real platform responses (``../shared/recorded/``, vcrpy cassettes and AT Protocol
lexicons) for the conformance suite. The recording wins over the simulator and the adapters.

``interaction(folder, cassette, method, path)`` finds one recorded request/response pair; its
``json()`` is the decompressed, decoded body and ``headers`` the recorded headers (lower-case
names, first value). ``lexicon(nsid)`` loads a lexicon document.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RECORDED = Path(os.environ.get("CRISISCOMMS_RECORDED_DIR")
                or REPO.parent / "shared" / "recorded")


def recorded_root() -> Path:
    """The recordings folder (``../shared/recorded`` beside the clone, or
    ``$CRISISCOMMS_RECORDED_DIR``). They are not part of the repository: a clone without them
    skips the conformance tests, saying where they were looked for; under ``CI=true`` that is a
    failure, as for the PostgreSQL tests."""
    if not RECORDED.is_dir():
        why = (f"recorded responses not found at {RECORDED} (put shared/recorded beside the "
               "clone or set CRISISCOMMS_RECORDED_DIR)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return RECORDED


@dataclass(frozen=True)
class Interaction:
    """One recorded request and the real response to it."""

    cassette: str
    method: str
    uri: str
    request_body: str | None
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.uri).query)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def name(self) -> str:
        """How a test names the recording it follows."""
        return f"shared/recorded/{self.cassette} {self.method} {self.path}"


def _body(raw: Any, headers: dict[str, str]) -> bytes:
    data = raw.get("string", b"") if isinstance(raw, dict) else raw
    if isinstance(data, str):
        data = data.encode("utf-8")
    data = data or b""
    encoding = headers.get("content-encoding", "")
    if data[:2] == b"\x1f\x8b" or encoding == "gzip":
        try:
            return gzip.decompress(data)
        except OSError:
            return data
    if encoding == "deflate":
        return zlib.decompress(data)
    return data


@cache
def load(cassette: str) -> tuple[Interaction, ...]:
    """Every interaction of ``cassette`` (a path under shared/recorded, e.g. ``x/test_x.yaml``)."""
    doc = yaml.load((recorded_root() / cassette).read_text(encoding="utf-8"),
                    Loader=yaml.Loader)  # vcrpy writes !!binary bodies
    out = []
    for it in doc["interactions"]:
        req, resp = it["request"], it["response"]
        headers = {k.lower(): (v[0] if isinstance(v, list) and v else str(v))
                   for k, v in (resp.get("headers") or {}).items()}
        body = req.get("body")
        out.append(Interaction(cassette, req["method"], req["uri"],
                               body if isinstance(body, str) or body is None else
                               body.decode("utf-8", "replace"),
                               int(resp["status"]["code"]), headers,
                               _body(resp.get("body") or {}, headers)))
    return tuple(out)


def interaction(cassette: str, method: str, path_contains: str, index: int = 0) -> Interaction:
    """The ``index``-th interaction of ``cassette`` with this method whose path contains
    ``path_contains``."""
    found = [i for i in load(cassette) if i.method == method and path_contains in i.path]
    if len(found) <= index:
        raise AssertionError(f"{cassette}: no recorded {method} *{path_contains}* "
                             f"(have: {[(i.method, i.path) for i in load(cassette)]})")
    return found[index]


def lexicon(nsid: str) -> dict[str, Any]:
    """An AT Protocol lexicon, e.g. ``com.atproto.repo.createRecord``."""
    path = recorded_root() / "bluesky" / "lexicons" / (nsid.replace(".", "/") + ".json")
    return json.loads(path.read_text(encoding="utf-8"))


def shape(value: Any) -> Any:
    """The shape of a JSON value: field names and types, nested (for simulator comparisons)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return None
    return type(value).__name__
