"""Finding 5 (issue 13): a YAML typo must not block the commands that do not need the broken
file, and every error names the right file, key and line (as a person counts lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.domain.errors import ConfigError


def _line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _add_key_after(path: Path, item_line: str, key_line: str) -> None:
    """Add ``key_line`` to the list item that starts with ``item_line`` (as its 2nd line)."""
    lines = path.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if item_line in line)
    indent = lines[n].index(item_line) + 2
    lines.insert(n + 1, " " * indent + key_line)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ the right line

def test_a_missing_colon_names_the_line_of_the_typo(playbooks_dir: Path):
    """PyYAML reports this one on the NEXT line ("could not find expected ':'")."""
    target = playbooks_dir / "sources.yaml"
    line = _line_of(target, "agency: Met Office")
    _replace(target, "agency: Met Office", "agency Met Office")
    with pytest.raises(ConfigError) as info:
        load_catalog(playbooks_dir)
    assert f"sources.yaml:{line}:" in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_a_schema_error_names_the_line_and_key_of_the_offending_value(playbooks_dir: Path):
    target = playbooks_dir / "sources.yaml"
    line = _line_of(target, "- id: met-office-ee") + 1
    _add_key_after(target, "- id: met-office-ee", "interval_seconds: 1")  # below the minimum
    with pytest.raises(ConfigError) as info:
        load_catalog(playbooks_dir)
    msg = str(info.value)
    assert f"sources.yaml:{line}: sources.met-office-ee.interval_seconds:" in msg, msg


def test_an_unknown_key_names_its_own_line(playbooks_dir: Path):
    target = playbooks_dir / "flooding.yaml"
    line = _line_of(target, "hourly_ceiling: 20")
    _replace(target, "hourly_ceiling: 20", "hourly_cieling: 20")
    with pytest.raises(ConfigError) as info:
        load_catalog(playbooks_dir)
    assert f"flooding.yaml:{line}: hourly_cieling: unknown key" in str(info.value)


def test_a_cross_check_error_names_the_line(playbooks_dir: Path):
    target = playbooks_dir / "flooding.yaml"
    line = _line_of(target, "- source: eeast-x")
    _replace(target, "- source: eeast-x", "- source: eeast-xx")
    with pytest.raises(ConfigError) as info:
        load_catalog(playbooks_dir)
    assert f"flooding.yaml:{line}: sources.eeast-xx: unknown source id" in str(info.value)


def test_the_error_carries_file_line_key_and_problem(playbooks_dir: Path):
    from crisiscomms.adapters.playbooks import problem_of

    target = playbooks_dir / "sources.yaml"
    line = _line_of(target, "- id: met-office-ee") + 1
    _add_key_after(target, "- id: met-office-ee", "interval_seconds: 1")  # below the minimum
    with pytest.raises(ConfigError) as info:
        load_catalog(playbooks_dir)
    p = problem_of(info.value)
    assert (p.file, p.line, p.key) == (str(target), line, "sources.met-office-ee.interval_seconds")
    assert p.error and "\n" not in p.error


# ------------------------------------------------------------------ commands keep working

def _break_severe_weather(playbooks_dir: Path) -> int:
    target = playbooks_dir / "severe-weather.yaml"
    line = _line_of(target, "allowed_leads:")
    _replace(target, "allowed_leads:", "allowed_leads")  # a YAML syntax error
    return line


def _an_item(cli) -> int:
    import json

    cli("activate", "flooding", "--reason", "river over its banks")
    items = json.loads(cli("queue", "list", "--json").out)
    assert items, "activation queues its message"
    return int(items[0]["id"])


def test_a_broken_unrelated_playbook_does_not_block_hold_report_deactivate(cli, playbooks_dir):
    item = _an_item(cli)
    _break_severe_weather(playbooks_dir)
    r = cli("queue", "hold", str(item), "--reason", "check first")
    assert r.code == 0, r.err
    r = cli("report", "--last")
    assert r.code == 0, r.err
    r = cli("deactivate", "--reason", "water receding")
    assert r.code == 0, r.err


def test_a_broken_playbook_in_use_names_its_line(cli, playbooks_dir):
    _an_item(cli)
    target = playbooks_dir / "flooding.yaml"
    line = _line_of(target, "hourly_ceiling: 20")
    _replace(target, "hourly_ceiling: 20", "hourly_ceiling 20")
    # Standing down must never wait for a file to be fixed at 2 a.m.: the flag goes off, and
    # the officer is told, naming the file and line, that the stand-down message was not queued.
    r = cli("deactivate", "--reason", "water receding")
    assert r.code == 0, r.err
    assert "crisis flag off" in r.out
    warning = [ln for ln in r.err.splitlines() if "stand-down message" in ln]
    assert warning and f"flooding.yaml:{line}:" in warning[0], r.err
    # A command that needs the broken playbook itself names its line.
    r = cli("activate", "flooding", "--reason", "again")
    assert r.code == 2 and f"flooding.yaml:{line}:" in r.err


def test_a_broken_sources_file_does_not_block_queue_hold(cli, playbooks_dir):
    item = _an_item(cli)
    target = playbooks_dir / "sources.yaml"
    line = _line_of(target, "agency: Met Office")
    _replace(target, "agency: Met Office", "agency Met Office")
    r = cli("queue", "hold", str(item), "--reason", "check first")
    assert r.code == 0, r.err
    # A command that needs the sources says which line of which file is wrong: activate checks
    # them, the report names each source's agency.
    r = cli("activate", "severe-weather", "--reason", "storm")
    assert r.code == 2 and f"sources.yaml:{line}:" in r.err, r.err
    # The report is built from the database: it goes on, saying what it could not read.
    r = cli("report", "--last")
    assert r.code == 0, r.err
    assert f"sources.yaml:{line}:" in r.out and "could not be read" in r.out
    r = cli("deactivate", "--reason", "water receding")
    assert r.code == 0, r.err


def test_playbooks_list_and_show_name_a_broken_playbook_and_go_on(cli, playbooks_dir):
    line = _break_severe_weather(playbooks_dir)
    r = cli("playbooks", "list")
    assert r.code == 0 and "flooding" in r.out and "severe-weather" not in r.out
    assert f"severe-weather.yaml:{line}:" in r.err
    assert cli("playbooks", "show", "flooding").code == 0
    r = cli("playbooks", "show", "severe-weather")
    assert r.code == 2 and f"severe-weather.yaml:{line}:" in r.err
    # validate stays strict: the broken file is an error (exit 2)
    r = cli("playbooks", "validate")
    assert r.code == 2 and f"severe-weather.yaml:{line}:" in r.err


def test_status_answers_through_a_broken_policy_and_names_the_folder(cli, playbooks_dir):
    target = playbooks_dir / "policy.yaml"
    line = _line_of(target, "week: calendar")
    _replace(target, "week: calendar", "week calendar")
    r = cli("status")
    assert r.code == 0, r.err
    assert f"playbooks: {playbooks_dir}" in r.out
    assert f"policy.yaml:{line}:" in r.out
