"""The YAML loader for the playbooks folder: reads each file, validates it against the schema in
``crisiscomms.domain.config`` and cross-checks the files. Every error names the file, the line
(as a person counts lines), the key path and what is wrong, on one line:
``playbooks/sources.yaml:12: sources.police.url: ...``; the parts are on the error too
(``problem_of``), for the watcher's reload audit and ``status``.

``load_catalog(directory)`` is strict: any broken file is an error (the watcher, ``playbooks
validate``). ``load_catalog(directory, partial=True)`` (the other commands) records a broken
``sources.yaml``, ``channels.yaml`` or playbook file as broken instead: only a command that
reads that part fails, with that file's error; a broken ``policy.yaml`` is an error at once
(every command needs the policy). ``PlaybookFiles`` is what the watcher uses to notice that the
folder changed (file sizes and times each cycle, a content hash only when those moved).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from crisiscomms.domain.config import (
    RESERVED_FILES,
    Catalog,
    ChannelConfig,
    ChannelsFile,
    Playbook,
    PolicyConfig,
    SourceConfig,
    SourcesFile,
    check_actions,
    cross_check,
)
from crisiscomms.domain.errors import ConfigError, PlaybookError

M = TypeVar("M", bound=BaseModel)
V = TypeVar("V")


@dataclass(frozen=True)
class FileProblem:
    """What is wrong in one playbooks file, and where: ``line`` counts from 1; ``key`` is the
    key path (list items by their id), ``None`` when the file cannot be read as YAML."""

    file: str
    line: int | None
    key: str | None
    error: str

    def details(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "key": self.key, "error": self.error}

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.error}" if self.key else f"{where}: {self.error}"


class ConfigFileError(ConfigError):
    """A ``ConfigError`` that knows its file, line and key."""

    def __init__(self, problem: FileProblem, message: str | None = None) -> None:
        super().__init__(message or str(problem))
        self.problem = problem


class PlaybookFileError(ConfigFileError, PlaybookError):
    """A ``PlaybookError`` (an incident playbook file) that knows its file, line and key."""


def problem_of(exc: ConfigError) -> FileProblem:
    """The file, line, key and problem of a configuration error (best effort for errors raised
    elsewhere: ``path: key: problem``)."""
    if isinstance(exc, ConfigFileError):
        return exc.problem
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if not sep:
        return FileProblem("", None, None, text)
    key, sep, error = rest.partition(": ")
    return FileProblem(head, None, key if sep else None, error if sep else rest)


def _raise(error: type[ConfigError], problem: FileProblem,
           message: str | None = None) -> NoReturn:
    cls = PlaybookFileError if issubclass(error, PlaybookError) else ConfigFileError
    raise cls(problem, message) from None


def _no_duplicate_keys_loader(base: type[Any]) -> type[Any]:
    class Loader(base):  # type: ignore[valid-type,misc]
        pass

    def construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
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


_LOADER = _no_duplicate_keys_loader(yaml.SafeLoader)
# libyaml's parser where PyYAML has it: the same nodes and marks, ten times faster. A file it
# refuses is read again with the Python parser, whose messages and marks the errors quote.
_FAST_LOADER = _no_duplicate_keys_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))

# Errors PyYAML reports where it gave up (often the next line) while the mistake is where the
# construct it was reading began: a key without its colon, a quote never closed.
_AT_CONTEXT = ("while scanning a simple key", "while scanning a quoted scalar",
               "while scanning a block scalar", "while scanning an anchor",
               "while scanning an alias", "while scanning a tag")


def _yaml_mark(exc: yaml.MarkedYAMLError, text: str) -> Any:
    problem, context = exc.problem_mark, exc.context_mark
    at_end = problem is not None and problem.index >= len(text.rstrip())
    if context is not None and (problem is None or at_end or
                                (exc.context or "").startswith(_AT_CONTEXT)):
        return context
    return problem or context


@dataclass(frozen=True)
class YamlDocument:
    """A file's data and its node tree (where each key and value is)."""

    data: Any
    node: yaml.Node | None


def read_yaml(path: Path) -> YamlDocument:
    """Read one YAML file strictly (no duplicate keys); errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        _raise(ConfigError, FileProblem(str(path), None, None, "file not found"))
    except (OSError, UnicodeDecodeError) as exc:
        _raise(ConfigError, FileProblem(str(path), None, None, f"cannot read: {exc}"))
    fast = _FAST_LOADER(text)
    try:
        node = fast.get_single_node()
        return YamlDocument(fast.construct_document(node) if node is not None else None, node)
    except yaml.YAMLError:
        pass
    finally:
        fast.dispose()
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = _yaml_mark(exc, text)
        what = " ".join(str(exc.problem or exc.context).split())
        problem = FileProblem(str(path), mark.line + 1 if mark else None, None,
                              f"invalid YAML: {what}")
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        _raise(ConfigError, problem, f"{path}{where}: {problem.error}")
    except yaml.YAMLError as exc:
        _raise(ConfigError, FileProblem(str(path), None, None,
                                        f"invalid YAML: {' '.join(str(exc).split())}"))
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    return YamlDocument(data, node)


def load_yaml(path: Path) -> Any:
    """Read one YAML file strictly (no duplicate keys); errors name the file and line."""
    return read_yaml(path).data


def _identity(node: Any) -> Any:
    if not isinstance(node, dict):
        return None
    return node.get("id") or node.get("source") or node.get("channel")


def _node_identity(node: yaml.Node) -> str | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for name in ("id", "source", "channel"):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == name and \
                    isinstance(v, yaml.ScalarNode) and v.value:
                return str(v.value)
    return None


def line_of(node: yaml.Node | None, path: Iterable[str | int]) -> int | None:
    """The line (from 1) of the deepest part of ``path`` found in the node tree: a mapping
    key's own line, a list item's first line. Parts: keys, list indexes (int or ``[i]``) or a
    list item's id/source/channel."""
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value
                     if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not found:
                break
            key_node, node = found[-1]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            text = str(part)
            index = int(text.strip("[]")) if re.fullmatch(r"\[?\d+\]?", text) else None
            if index is not None and index < len(node.value) and \
                    (isinstance(part, int) or text.startswith("[")):
                node = node.value[index]
            else:
                items = [n for n in node.value if _node_identity(n) == text]
                if not items:
                    break
                node = items[-1]  # a duplicate id: the second one is the mistake
            line = node.start_mark.line + 1
        else:
            break
    return line


def _key_parts(key: str) -> list[str]:
    return re.findall(r"\[\d+\]|[^.\[\]]+", key)


def _problems(path: Path, exc: ValidationError, data: Any,
              node: yaml.Node | None) -> list[FileProblem]:
    out = []
    for err in exc.errors():
        parts: list[str] = []
        here = data
        for loc in err["loc"]:
            if isinstance(loc, int) and isinstance(here, list) and loc < len(here):
                siblings = here
                here = here[loc]
                ident = _identity(here)
                # Name a list item by its id only when that id is unique in the list.
                unique = ident is not None and \
                    [_identity(x) for x in siblings].count(ident) == 1
                parts.append(str(ident) if unique else f"[{loc}]")
                continue
            text = str(loc)
            # A key is user input: keep the message on one line whatever it contains.
            parts.append(repr(text) if not text.isprintable() else text)
            here = here.get(loc) if isinstance(here, dict) else None
        key = ".".join(parts).replace(".[", "[") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(FileProblem(str(path), line_of(node, err["loc"]), key, " ".join(msg.split())))
    return out


def format_validation_error(path: Path, exc: ValidationError, data: Any = None,
                            node: yaml.Node | None = None) -> str:
    """One line per problem: ``file:line: key.path: message`` (ids used where lists have
    them; the line when the node tree is given)."""
    return "; ".join(str(p) for p in _problems(path, exc, data, node))


def parse_model(model: type[M], path: Path, data: Any, error: type[ConfigError],
                node: yaml.Node | None = None) -> M:
    """Validate ``data`` read from ``path`` as ``model``; raise ``error`` in one line."""
    if data is None:
        _raise(error, FileProblem(str(path), None, None, "file is empty"))
    if not isinstance(data, dict):
        _raise(error, FileProblem(str(path), line_of(node, []) or 1, "(top level)",
                                  "expected a mapping of keys"))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _problems(path, exc, data, node)
        _raise(error, problems[0], "; ".join(str(p) for p in problems))


def _parse_file(model: type[M], path: Path, error: type[ConfigError]) -> tuple[M, yaml.Node | None]:
    doc = read_yaml(path)
    return parse_model(model, path, doc.data, error, doc.node), doc.node


def _located(exc: ConfigError, path: Path, node: yaml.Node | None) -> ConfigError:
    """``exc`` (``path: key: problem``, raised by a domain check) with the key's line."""
    if isinstance(exc, ConfigFileError):
        return exc
    p = problem_of(exc)
    if p.file != str(path) or p.key is None:
        return exc
    problem = FileProblem(p.file, line_of(node, _key_parts(p.key)), p.key, p.error)
    cls = PlaybookFileError if isinstance(exc, PlaybookError) else ConfigFileError
    return cls(problem)


class BrokenPart(dict[str, V]):
    """A part of the catalogue whose file is broken (a partial load): reading it raises that
    file's error, so only a command that needs the file fails, and says where."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__()
        self.error = error

    def fail(self) -> NoReturn:
        problem = problem_of(self.error)
        cls = PlaybookFileError if isinstance(self.error, PlaybookError) else ConfigFileError
        raise cls(problem, str(self.error))

    def __getitem__(self, key: str) -> V:
        self.fail()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.fail()

    def __contains__(self, key: object) -> bool:
        self.fail()

    def __iter__(self) -> Iterator[str]:
        self.fail()

    def __len__(self) -> int:
        self.fail()

    def keys(self) -> Any:
        self.fail()

    def values(self) -> Any:
        self.fail()

    def items(self) -> Any:
        self.fail()


class PartialPlaybooks(dict[str, Playbook]):
    """The playbooks of a partial load: the good ones, and the broken ones by name (reading a
    broken one raises its file's error; listing shows only the good ones)."""

    def __init__(self, good: dict[str, Playbook], broken: dict[str, ConfigError]) -> None:
        super().__init__(good)
        self.broken = broken

    def _check(self, key: object) -> None:
        if isinstance(key, str) and key in self.broken:
            BrokenPart[Playbook](self.broken[key]).fail()

    def __getitem__(self, key: str) -> Playbook:
        self._check(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._check(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._check(key)
        return super().__contains__(key)


def broken_files(catalog: Catalog) -> list[FileProblem]:
    """What a partial load found broken (nothing for a strict load)."""
    out = [problem_of(part.error) for part in (catalog.sources, catalog.channels)
           if isinstance(part, BrokenPart)]
    if isinstance(catalog.playbooks, PartialPlaybooks):
        out += [problem_of(e) for e in catalog.playbooks.broken.values()]
    return out


def _load_part(model: type[Any], path: Path, key: str, *, partial: bool) -> Any:
    """``sources.yaml`` or ``channels.yaml`` as ``{id: entry}`` (ids unique, errors located);
    ``partial``: a broken file is recorded as broken instead of raising."""
    try:
        parsed, node = _parse_file(model, path, ConfigError)
        entries = getattr(parsed, key)
        try:
            _unique(path, key, (e.id for e in entries))
        except ConfigError as exc:
            raise _located(exc, path, node) from None
        return {e.id: e for e in entries}
    except ConfigError as exc:
        if not partial:
            raise
        return BrokenPart[Any](exc)


def load_catalog(directory: Path, *, partial: bool = False) -> Catalog:
    """Load and cross-check every playbook file in ``directory``. ``partial``: a broken
    sources, channels or playbook file is recorded as broken (reading it raises its error)
    instead of failing the whole load; ``policy.yaml`` must always be valid."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: playbooks folder not found "
                          "(set CRISISCOMMS_PLAYBOOKS_DIR)")
    files = {
        "policy": directory / "policy.yaml",
        "sources": directory / "sources.yaml",
        "channels": directory / "channels.yaml",
    }
    policy, policy_node = _parse_file(PolicyConfig, files["policy"], ConfigError)
    sources: dict[str, SourceConfig] = _load_part(
        SourcesFile, files["sources"], "sources", partial=partial)
    channels: dict[str, ChannelConfig] = _load_part(
        ChannelsFile, files["channels"], "channels", partial=partial)
    sources_ok = not isinstance(sources, BrokenPart)
    channels_ok = not isinstance(channels, BrokenPart)
    if channels_ok:
        try:
            for key in policy.weekly_caps:
                if key not in channels:
                    raise ConfigError(f"{files['policy']}: weekly_caps.{key}: unknown channel id")
            check_actions(files["policy"], "normal_channels", policy.normal_channels, channels,
                          ConfigError)
        except ConfigError as exc:
            raise _located(exc, files["policy"], policy_node) from None

    playbooks: dict[str, Playbook] = {}
    broken: dict[str, ConfigError] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name in RESERVED_FILES:
            continue
        try:
            pb, node = _parse_file(Playbook, path, PlaybookError)
            try:
                if pb.name != path.stem:
                    raise PlaybookError(f"{path}: name: {pb.name!r} must match the file name "
                                        f"{path.stem!r}")
                if pb.name in playbooks:
                    raise PlaybookError(f"{path}: name: duplicate playbook {pb.name!r}")
                _cross_check(path, pb, sources, channels, sources_ok, channels_ok)
            except ConfigError as exc:
                raise _located(exc, path, node) from None
        except ConfigError as exc:
            if not partial:
                raise
            broken[path.stem] = exc
            files[f"playbook:{path.stem}"] = path
            continue
        playbooks[pb.name] = pb
        files[f"playbook:{pb.name}"] = path
    if broken:
        playbooks = PartialPlaybooks(playbooks, broken)
    return Catalog(directory, policy, sources, channels, playbooks, files)


def _cross_check(path: Path, pb: Playbook, sources: dict[str, SourceConfig],
                 channels: dict[str, ChannelConfig], sources_ok: bool,
                 channels_ok: bool) -> None:
    """The domain's cross-check, of the parts that could be read (a partial load)."""
    if sources_ok and channels_ok:
        cross_check(path, pb, sources, channels)
    elif sources_ok:
        cross_check(path, pb.model_copy(update={"channels": []}), sources, {})
    elif channels_ok:
        check_actions(path, "channels", pb.channels, channels, PlaybookError)


def _unique(path: Path, key: str, ids: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ConfigError(f"{path}: {key}.{i}: duplicate id")
        seen.add(i)
    return seen


Stamp = dict[str, tuple[int, int] | None]


class PlaybookFiles:
    """A playbooks folder as a running watcher follows it: ``stamp()`` is cheap (each file's
    modification time and size, every cycle); ``digests()`` hashes the contents (only when a
    stamp moved); ``load()`` is the strict load."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def paths(self) -> list[Path]:
        found = set(self.directory.glob("*.yaml")) if self.directory.is_dir() else set()
        found |= {self.directory / name for name in RESERVED_FILES}
        return sorted(found)

    def stamp(self) -> Stamp:
        out: Stamp = {}
        for path in self.paths():
            try:
                st = path.stat()
            except OSError:
                out[path.name] = None
                continue
            out[path.name] = (st.st_mtime_ns, st.st_size)
        return out

    def digests(self) -> dict[str, str]:
        out = {}
        for path in self.paths():
            try:
                out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                out[path.name] = ""  # missing or unreadable: the load says which
        return out

    def load(self) -> Catalog:
        return load_catalog(self.directory)

    def locate(self, exc: ConfigError) -> dict[str, Any]:
        return problem_of(exc).details()
