"""Playbook validation: every mistake is one line naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.domain.config import normalise_hashtag
from crisiscomms.domain.errors import ConfigError, NotFoundError, PlaybookError, RefusedError

REPO = Path(__file__).resolve().parent.parent


def test_bundled_playbooks_validate_and_list_unpinned_x_ids():
    cat = load_catalog(REPO / "playbooks")
    assert {"flooding", "severe-weather", "major-incident"} <= set(cat.playbooks)
    assert cat.policy.weekly_caps == {"x": 25, "facebook": 5}
    assert cat.policy.timezone == "Europe/London"
    warnings = cat.warnings()
    assert len(warnings) == 3
    assert any("EssexPoliceUK" in w for w in warnings)
    assert any("EastEnglandAmb" in w for w in warnings)
    with pytest.raises(RefusedError, match="pinned"):
        cat.check_activatable(cat.playbook("flooding"))


def _edit(d: Path, name: str, fn) -> None:
    data = yaml.safe_load((d / name).read_text())
    fn(data)
    (d / name).write_text(yaml.safe_dump(data, sort_keys=False))


CASES = [
    ("malformed-yaml", lambda d: (d / "flooding.yaml").write_text("name: [unclosed\n"),
     ConfigError, r"flooding.yaml:\d+:\d+: invalid YAML"),
    ("duplicate-key", lambda d: (d / "flooding.yaml").write_text(
        (d / "flooding.yaml").read_text() + "\nname: flooding\n"),
     ConfigError, "duplicate key 'name'"),
    ("unknown-key", lambda d: _edit(d, "flooding.yaml", lambda p: p.update(colour="red")),
     PlaybookError, r"flooding.yaml:\d+: colour: unknown key"),
    ("unknown-source", lambda d: _edit(d, "flooding.yaml",
                                       lambda p: p["sources"].append({"source": "nope"})),
     PlaybookError, r"flooding.yaml:\d+: sources.nope: unknown source id"),
    ("unknown-channel", lambda d: _edit(
        d, "flooding.yaml", lambda p: p["channels"].append({"channel": "tiktok",
                                                             "action": "post"})),
     PlaybookError, r"flooding.yaml:\d+: channels.tiktok: unknown channel id"),
    ("bad-hashtag", lambda d: _edit(d, "flooding.yaml", lambda p: p.update(hashtags=["#1bad"])),
     PlaybookError, r"flooding.yaml:\d+: hashtags: invalid hashtag"),
    ("bad-action", lambda d: _edit(d, "flooding.yaml",
                                   lambda p: p["channels"][1].update(action="retweet")),
     PlaybookError, "channels.facebook.action: retweet is not possible on facebook"),
    ("duplicate-source-id", lambda d: _edit(d, "sources.yaml",
                                            lambda s: s["sources"].append(dict(s["sources"][0]))),
     ConfigError, r"sources.yaml:\d+: sources.essex-police-x: duplicate id"),
    ("x-handle-as-id", lambda d: _edit(d, "sources.yaml",
                                       lambda s: s["sources"][0].update(x_user_id="@bad")),
     ConfigError, "sources.essex-police-x.x_user_id: x_user_id must be the numeric"),
    ("bad-kind", lambda d: _edit(d, "sources.yaml", lambda s: s["sources"][0].update(kind="fax")),
     ConfigError, "sources.essex-police-x.kind"),
    ("feed-without-url", lambda d: _edit(d, "sources.yaml",
                                         lambda s: s["sources"][3].pop("url")),
     ConfigError, "sources.met-office-ee: a rss source needs 'url'"),
    ("bad-severity", lambda d: _edit(
        d, "flooding.yaml", lambda p: p["sources"][3]["filters"].update(min_severity="Huge")),
     PlaybookError, "unknown CAP severity 'Huge'"),
    ("lead-not-a-source", lambda d: _edit(d, "flooding.yaml",
                                          lambda p: p.update(default_lead="ghost")),
     PlaybookError, "default_lead 'ghost' is not one of its sources"),
    ("name-mismatch", lambda d: _edit(d, "flooding.yaml", lambda p: p.update(name="floods")),
     PlaybookError, "must match the file name"),
    ("bad-template-field", lambda d: _edit(
        d, "flooding.yaml", lambda p: p["channels"][0].update(template="{secret}")),
     PlaybookError, r"unknown template field \{secret\}"),
    ("bad-timezone", lambda d: _edit(d, "policy.yaml", lambda p: p.update(timezone="Mars/Base")),
     ConfigError, r"policy.yaml:\d+: timezone: unknown time zone"),
    ("cap-unknown-channel", lambda d: _edit(d, "policy.yaml",
                                            lambda p: p["weekly_caps"].update(tiktok=3)),
     ConfigError, "weekly_caps.tiktok: unknown channel id"),
    ("secret-in-channel", lambda d: _edit(
        d, "channels.yaml", lambda c: c["channels"][0]["credentials"].update(
            consumer_key="abc123-real-secret")),
     ConfigError, "channels.x.credentials.consumer_key"),
    ("empty-file", lambda d: (d / "channels.yaml").write_text(""),
     ConfigError, "channels.yaml: file is empty"),
    ("not-a-mapping", lambda d: (d / "policy.yaml").write_text("- a\n- b\n"),
     ConfigError, r"policy.yaml:\d+: \(top level\): expected a mapping"),
    ("missing-file", lambda d: (d / "sources.yaml").unlink(),
     ConfigError, "sources.yaml: file not found"),
]


@pytest.mark.parametrize(("case", "mutate", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_each_mistake_is_named(playbooks_dir: Path, case, mutate, error, pattern):
    mutate(playbooks_dir)
    with pytest.raises(error, match=pattern) as exc:
        load_catalog(playbooks_dir)
    assert "\n" not in str(exc.value)


def test_unknown_playbook_names_the_known_ones(playbooks_dir: Path):
    with pytest.raises(NotFoundError, match="known: flooding, major-incident, severe-weather"):
        load_catalog(playbooks_dir).playbook("volcano")


@pytest.mark.parametrize("tag,ok", [("EssexFloods", "#EssexFloods"), ("#A_1", "#A_1"),
                                    ("#1abc", None), ("#a b", None), ("#", None),
                                    ("#" + "a" * 100, None), ("#naïve", None)])
def test_hashtags(tag, ok):
    if ok:
        assert normalise_hashtag(tag) == ok
    else:
        with pytest.raises(ValueError):
            normalise_hashtag(tag)


def test_cli_validate_reports_errors_with_exit_2(cli, playbooks_dir: Path):
    r = cli("playbooks", "validate")
    assert r.code == 0 and "3 playbooks" in r.out
    _edit(playbooks_dir, "flooding.yaml", lambda p: p.update(colour="red"))
    r = cli("playbooks", "validate", str(playbooks_dir))
    assert r.code == 2
    line = next(n for n, text in enumerate(
        (playbooks_dir / "flooding.yaml").read_text().splitlines(), 1) if text.startswith("colour"))
    assert r.err.strip().endswith(f"flooding.yaml:{line}: colour: unknown key")
    assert len(r.err.strip().splitlines()) == 1


def test_cli_list_and_show(cli):
    r = cli("playbooks", "list")
    assert r.code == 0 and "flooding" in r.out and "#EssexFloods" in r.out
    r = cli("playbooks", "show", "flooding")
    assert r.code == 0 and "essex-police-x" in r.out and "retweet" in r.out
    r = cli("playbooks", "show", "nope")
    assert r.code == 2
