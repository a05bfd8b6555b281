"""Values built to, and checked against, the AT Protocol lexicons in ``shared/recorded``.

The Bluesky conformance suite (``test_bluesky_xrpc.py``) feeds the adapters responses built
from a lexicon's output schema (``example``: required fields only, or with every optional field
the lexicons define) and checks the simulator's answers against it (``problems``). The tests in
this module show that the check can fail: a missing required field, a wrong type, a union
member without ``$type``, a bad nested record are all reported.

Lexicons our calls reach that are not in ``shared/recorded`` are in ``ELSEWHERE``, copied from
bluesky-social/atproto ``lexicons/`` (required fields and the properties we use); anything
else not recorded is not checked (an open reference is accepted as any object).
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Any

import pytest

from .cassettes import lexicon

Schema = dict[str, Any]

# Definitions reached from the recorded lexicons but not recorded themselves
# (bluesky-social/atproto lexicons/com/atproto/repo/strongRef.json, .../repo/defs.json,
# lexicons/app/bsky/actor/defs.json).
ELSEWHERE: dict[str, Schema] = {
    "com.atproto.repo.strongRef#main": {
        "type": "object",
        "required": ["uri", "cid"],
        "properties": {
            "uri": {"type": "string", "format": "at-uri"},
            "cid": {"type": "string", "format": "cid"},
        },
    },
    "com.atproto.repo.defs#commitMeta": {
        "type": "object",
        "required": ["cid", "rev"],
        "properties": {
            "cid": {"type": "string", "format": "cid"},
            "rev": {"type": "string", "format": "tid"},
        },
    },
    "app.bsky.actor.defs#profileViewBasic": {
        "type": "object",
        "required": ["did", "handle"],
        "properties": {
            "did": {"type": "string", "format": "did"},
            "handle": {"type": "string", "format": "handle"},
            "displayName": {"type": "string", "maxLength": 640},
            "avatar": {"type": "string", "format": "uri"},
            "createdAt": {"type": "string", "format": "datetime"},
        },
    },
}

_FORMATS: dict[str, re.Pattern[str]] = {
    "did": re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]+"),
    "handle": re.compile(r"([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
                         r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"),
    "at-uri": re.compile(r"at://[^/\s]+(/[a-zA-Z0-9.-]+(/[a-zA-Z0-9._:~-]+)?)?"),
    "at-identifier": re.compile(r"(did:[a-z]+:\S+|[a-zA-Z0-9.-]+\.[a-zA-Z]+)"),
    "cid": re.compile(r"[a-zA-Z0-9+=]{8,}"),
    "tid": re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}"),
    "nsid": re.compile(r"[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)+"),
    "record-key": re.compile(r"[a-zA-Z0-9._:~-]{1,512}"),
    "language": re.compile(r"[a-z]{2,3}(-[a-zA-Z0-9]+)*"),
    "uri": re.compile(r"[a-z][a-z0-9+.-]*:\S+"),
}
_SAMPLES = {
    "did": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
    "handle": "example.bsky.social",
    "at-uri": "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3l3qo2vutsw2b",
    "at-identifier": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
    "cid": "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a",
    "tid": "3l3qo2vutsw2b",
    "datetime": "2026-12-01T10:00:00.000Z",
    "nsid": "app.bsky.feed.post",
    "record-key": "3l3qo2vutsw2b",
    "language": "en",
    "uri": "https://example.test/",
}
_MAX_DEPTH = 8


def _split(ref: str, context: str) -> str:
    """``ref`` as a full ``nsid#name`` (``#name`` is relative to ``context``)."""
    if ref.startswith("#"):
        return f"{context}{ref}"
    nsid, _, name = ref.partition("#")
    return f"{nsid}#{name or 'main'}"


def resolve(ref: str, context: str) -> tuple[str, Schema] | None:
    """``(full id, definition)`` of a lexicon reference, or ``None`` when not recorded."""
    full = _split(ref, context)
    if full in ELSEWHERE:
        return full, ELSEWHERE[full]
    nsid, _, name = full.partition("#")
    try:
        defs = lexicon(nsid)["defs"]
    except FileNotFoundError:
        return None
    return (full, defs[name]) if name in defs else None


def type_name(full: str) -> str:
    """How a ``$type`` names a definition (``#main`` is left off)."""
    return full.removesuffix("#main")


def output(nsid: str) -> Schema:
    """The output schema of an XRPC query or procedure."""
    schema: Schema = lexicon(nsid)["defs"]["main"]["output"]["schema"]
    return schema


def record(nsid: str) -> Schema:
    """The record schema of a record lexicon (e.g. ``app.bsky.feed.post``)."""
    schema: Schema = lexicon(nsid)["defs"]["main"]["record"]
    return schema


# -- checking ----------------------------------------------------------------------------------


def problems(value: Any, schema: Schema, context: str, path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (a lexicon definition read in ``context``, the
    lexicon's NSID): missing required fields, wrong types, bad formats, union members without
    a known ``$type``. Definitions that are not recorded are not checked."""
    kind = schema.get("type")
    if kind == "ref":
        found = resolve(schema["ref"], context)
        if found is None:
            return [] if isinstance(value, dict) else [f"{path}: expected an object"]
        full, definition = found
        return problems(value, definition, full.partition("#")[0], path)
    if kind == "union":
        return _union_problems(value, schema, context, path)
    if kind == "record":
        return problems(value, schema["record"], context, path)
    if kind == "object":
        return _object_problems(value, schema, context, path)
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected an array, got {type(value).__name__}"]
        out = []
        for i, element in enumerate(value):
            out += problems(element, schema["items"], context, f"{path}[{i}]")
        return out
    if kind == "string":
        return _string_problems(value, schema, path)
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: expected an integer, got {type(value).__name__}"]
        if "minimum" in schema and value < schema["minimum"]:
            return [f"{path}: {value} below the minimum {schema['minimum']}"]
        return []
    if kind == "boolean":
        if not isinstance(value, bool):
            return [f"{path}: expected a boolean, got {type(value).__name__}"]
        if "const" in schema and value != schema["const"]:
            return [f"{path}: must be {schema['const']}"]
        return []
    if kind == "unknown":
        return _unknown_problems(value, path)
    return []  # bytes, cid-link, blob: not used by our calls


def _object_problems(value: Any, schema: Schema, context: str, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {type(value).__name__}"]
    out = [f"{path}.{name}: required, missing" for name in schema.get("required", [])
           if name not in value]
    nullable = set(schema.get("nullable", []))
    for name, prop in schema.get("properties", {}).items():
        if name not in value or (value[name] is None and name in nullable):
            continue
        out += problems(value[name], prop, context, f"{path}.{name}")
    return out


def _union_problems(value: Any, schema: Schema, context: str, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: a union member must be an object"]
    named = value.get("$type")
    if not isinstance(named, str) or not named:
        return [f"{path}: a union member needs $type"]
    members = {type_name(_split(r, context)): r for r in schema["refs"]}
    if named not in members:
        return [f"{path}: $type {named!r} is not one of {sorted(members)}"] \
            if schema.get("closed") else []
    found = resolve(members[named], context)
    if found is None:
        return []
    full, definition = found
    return problems(value, definition, full.partition("#")[0], path)


def _string_problems(value: Any, schema: Schema, path: str) -> list[str]:
    if not isinstance(value, str):
        return [f"{path}: expected a string, got {type(value).__name__}"]
    fmt = schema.get("format")
    if fmt == "datetime":
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return [f"{path}: {value!r} is not a datetime"]
        return [] if parsed.tzinfo is not None else [f"{path}: {value!r} has no timezone"]
    pattern = _FORMATS.get(fmt or "")
    if pattern is not None and not pattern.fullmatch(value):
        return [f"{path}: {value!r} is not a valid {fmt}"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: must be {schema['const']!r}"]
    if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
        return [f"{path}: longer than {schema['maxLength']} bytes"]
    return []


def _unknown_problems(value: Any, path: str) -> list[str]:
    """``unknown`` is any object; a record of a recorded lexicon is checked against it."""
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {type(value).__name__}"]
    named = value.get("$type")
    if isinstance(named, str):
        found = resolve(named, named)
        if found is not None and found[1].get("type") == "record":
            return problems(value, found[1], named, path)
    return []


# -- building ----------------------------------------------------------------------------------


def post_record(full: bool = False) -> dict[str, Any]:
    """An ``app.bsky.feed.post`` record built from its lexicon."""
    built = example(record("app.bsky.feed.post"), "app.bsky.feed.post", full=full)
    return {"$type": "app.bsky.feed.post", **built}


def example(schema: Schema, context: str, *, full: bool = False, depth: int = 0) -> Any:
    """A value of ``schema``: required fields only, or (``full``) with every optional field
    whose definition is recorded. ``unknown`` fields get an ``app.bsky.feed.post`` record."""
    kind = schema.get("type")
    if depth > _MAX_DEPTH:
        raise _NotBuildable(context)
    if kind == "ref":
        found = resolve(schema["ref"], context)
        if found is None:
            raise _NotBuildable(schema["ref"])
        full_id, definition = found
        return example(definition, full_id.partition("#")[0], full=full, depth=depth + 1)
    if kind == "union":
        for ref in schema["refs"]:
            found = resolve(ref, context)
            if found is not None:
                full_id, definition = found
                built = example(definition, full_id.partition("#")[0], full=full,
                                depth=depth + 1)
                return {"$type": type_name(full_id), **built}
        raise _NotBuildable(str(schema["refs"]))
    if kind == "object":
        out: dict[str, Any] = {}
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            if name not in required and not full:
                continue
            try:
                out[name] = example(prop, context, full=full, depth=depth + 1)
            except _NotBuildable:
                if name in required:
                    raise
        return out
    if kind == "array":
        return [example(schema["items"], context, full=full, depth=depth + 1)]
    if kind == "string":
        if "const" in schema:
            return schema["const"]
        if schema.get("knownValues"):
            return schema["knownValues"][0]
        return _SAMPLES.get(schema.get("format", ""), "text")
    if kind == "integer":
        return max(int(schema.get("minimum", 0)), 1)
    if kind == "boolean":
        return schema.get("const", True)
    if kind == "unknown":
        return post_record(full=False)
    raise _NotBuildable(str(kind))


class _NotBuildable(Exception):
    """A definition that is not recorded (an optional field built from it is left out)."""


def merged(base: Any, changes: Any) -> Any:
    """``base`` with ``changes`` applied (nested dicts merged, ``None`` deletes a key)."""
    if not isinstance(base, dict) or not isinstance(changes, dict):
        return copy.deepcopy(changes)
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value) if isinstance(value, dict) else \
                copy.deepcopy(value)
    return out


# -- the check itself can fail -----------------------------------------------------------------

CALLS = [
    "com.atproto.server.createSession",
    "com.atproto.server.refreshSession",
    "com.atproto.repo.createRecord",
    "com.atproto.repo.getRecord",
    "com.atproto.repo.listRecords",
    "app.bsky.feed.getAuthorFeed",
]


@pytest.mark.parametrize("nsid", CALLS)
@pytest.mark.parametrize("full", [False, True], ids=["required", "full"])
def test_built_outputs_satisfy_their_lexicon(nsid: str, full: bool) -> None:
    built = example(output(nsid), nsid, full=full)
    assert problems(built, output(nsid), nsid) == []
    required = set(output(nsid).get("required", []))
    optional = set(output(nsid)["properties"]) - required
    assert set(built) == (required | optional if full else required)


def test_a_missing_required_field_is_reported() -> None:
    nsid = "com.atproto.server.createSession"
    built = example(output(nsid), nsid)
    del built["did"]
    assert problems(built, output(nsid), nsid) == ["$.did: required, missing"]


def test_wrong_types_and_formats_are_reported() -> None:
    nsid = "com.atproto.repo.createRecord"
    built = merged(example(output(nsid), nsid), {"uri": "https://not-at-uri", "cid": 7})
    assert problems(built, output(nsid), nsid) == [
        "$.uri: 'https://not-at-uri' is not a valid at-uri",
        "$.cid: expected a string, got int",
    ]


def test_nested_feed_problems_are_reported() -> None:
    nsid = "app.bsky.feed.getAuthorFeed"
    built = example(output(nsid), nsid)
    built["feed"][0]["post"]["author"] = {"handle": "a.test"}
    built["feed"][0]["post"]["record"] = {"$type": "app.bsky.feed.post", "text": 3}
    built["feed"].append({"post": built["feed"][0]["post"] | {"indexedAt": "yesterday"},
                          "reason": {"by": {"did": "did:plc:x", "handle": "x.test"}}})
    assert problems(built, output(nsid), nsid) == [
        "$.feed[0].post.author.did: required, missing",
        "$.feed[0].post.record.createdAt: required, missing",
        "$.feed[0].post.record.text: expected a string, got int",
        "$.feed[1].post.author.did: required, missing",
        "$.feed[1].post.record.createdAt: required, missing",
        "$.feed[1].post.record.text: expected a string, got int",
        "$.feed[1].post.indexedAt: 'yesterday' is not a datetime",
        "$.feed[1].reason: a union member needs $type",
    ]


def test_a_repost_reason_must_say_when() -> None:
    nsid = "app.bsky.feed.getAuthorFeed"
    built = example(output(nsid), nsid)
    built["feed"][0]["reason"] = {"$type": "app.bsky.feed.defs#reasonRepost",
                                  "by": {"did": "did:plc:x", "handle": "x.test"}}
    assert problems(built, output(nsid), nsid) == ["$.feed[0].reason.indexedAt: required, missing"]
