"""The YAML loader for the playbooks folder: reads each file, validates it against the schema in
``crisiscomms.domain.config`` and cross-checks the files. Every error names the file, the key path
and what is wrong, on one line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from crisiscomms.domain.config import (
    RESERVED_FILES,
    Catalog,
    ChannelsFile,
    Playbook,
    PolicyConfig,
    SourcesFile,
    check_actions,
    cross_check,
)
from crisiscomms.domain.errors import ConfigError, PlaybookError

M = TypeVar("M", bound=BaseModel)

def _no_duplicate_keys_loader() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


_LOADER = _no_duplicate_keys_loader()


def load_yaml(path: Path) -> Any:
    """Read one YAML file strictly (no duplicate keys); errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _identity(node: Any) -> Any:
    if not isinstance(node, dict):
        return None
    return node.get("id") or node.get("source") or node.get("channel")


def format_validation_error(path: Path, exc: ValidationError, data: Any = None) -> str:
    """One line per problem: ``file: key.path: message`` (ids used where lists have them)."""
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        node = data
        for loc in err["loc"]:
            if isinstance(loc, int) and isinstance(node, list) and loc < len(node):
                siblings = node
                node = node[loc]
                ident = _identity(node)
                # Name a list item by its id only when that id is unique in the list.
                unique = ident is not None and \
                    [_identity(x) for x in siblings].count(ident) == 1
                parts.append(str(ident) if unique else f"[{loc}]")
                continue
            text = str(loc)
            # A key is user input: keep the message on one line whatever it contains.
            parts.append(repr(text) if not text.isprintable() else text)
            node = node.get(loc) if isinstance(node, dict) else None
        key = ".".join(parts).replace(".[", "[") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {key}: {' '.join(msg.split())}")
    return "; ".join(lines)


def parse_model(model: type[M], path: Path, data: Any, error: type[ConfigError]) -> M:
    """Validate ``data`` read from ``path`` as ``model``; raise ``error`` in one line."""
    if data is None:
        raise error(f"{path}: file is empty")
    if not isinstance(data, dict):
        raise error(f"{path}: (top level): expected a mapping of keys")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(path, exc, data)) from None


def load_catalog(directory: Path) -> Catalog:
    """Load and cross-check every playbook file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: playbooks folder not found "
                          "(set CRISISCOMMS_PLAYBOOKS_DIR)")
    files = {
        "policy": directory / "policy.yaml",
        "sources": directory / "sources.yaml",
        "channels": directory / "channels.yaml",
    }
    policy = parse_model(PolicyConfig, files["policy"], load_yaml(files["policy"]), ConfigError)
    src_file = parse_model(SourcesFile, files["sources"], load_yaml(files["sources"]), ConfigError)
    ch_file = parse_model(ChannelsFile, files["channels"], load_yaml(files["channels"]),
                          ConfigError)
    sources = _unique(files["sources"], "sources", (s.id for s in src_file.sources))
    channels = _unique(files["channels"], "channels", (c.id for c in ch_file.channels))
    source_map = {s.id: s for s in src_file.sources}
    channel_map = {c.id: c for c in ch_file.channels}
    del sources, channels
    for key in policy.weekly_caps:
        if key not in channel_map:
            raise ConfigError(f"{files['policy']}: weekly_caps.{key}: unknown channel id")
    check_actions(files["policy"], "normal_channels", policy.normal_channels, channel_map,
                   ConfigError)

    playbooks: dict[str, Playbook] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name in RESERVED_FILES:
            continue
        pb = parse_model(Playbook, path, load_yaml(path), PlaybookError)
        if pb.name != path.stem:
            raise PlaybookError(f"{path}: name: {pb.name!r} must match the file name {path.stem!r}")
        if pb.name in playbooks:
            raise PlaybookError(f"{path}: name: duplicate playbook {pb.name!r}")
        cross_check(path, pb, source_map, channel_map)
        playbooks[pb.name] = pb
        files[f"playbook:{pb.name}"] = path
    return Catalog(directory, policy, source_map, channel_map, playbooks, files)


def _unique(path: Path, key: str, ids: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ConfigError(f"{path}: {key}.{i}: duplicate id")
        seen.add(i)
    return seen

