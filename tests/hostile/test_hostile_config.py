"""Playbooks and drill scenarios with every kind of mistake.

Each case breaks ONE file of a temp copy of ``playbooks/`` (or of the bundled scenario) and
expects a ``ConfigError``/``PlaybookError`` whose message is one line naming the file and the
key. Hypothesis then mutates valid YAML at random: success or the project's own errors only.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.domain.errors import ConfigError, CrisisCommsError, PlaybookError
from crisiscomms.drill import load_scenario

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
SCENARIO = PLAYBOOKS / "drills" / "essex-flood.yaml"

Mutation = Callable[[Any], Any]


@dataclass(frozen=True)
class ConfigCase:
    id: str
    file: str
    mutate: Mutation | None = None  # on the parsed YAML (return the new document)
    expect: tuple[str, ...] = ()  # fragments the message must contain (the key, ...)
    text: Callable[[str], str] | None = None  # on the raw text
    raw: bytes | None = None  # replaces the file
    error: type[ConfigError] = ConfigError


def by_id(items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    return next(i for i in items if i.get(key) == value)


def setting(path: str, value: Any) -> Mutation:
    """Set ``a.b.c`` (list items by index or by their id/source/channel)."""

    def mutate(data: Any) -> Any:
        *head, last = path.split(".")
        node = data
        for part in head:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() else next(
                    i for i in node if part in (i.get("id"), i.get("source"), i.get("channel")))
            else:
                node = node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return data

    return mutate


_DELETE = object()


def both(*fns: Mutation) -> Mutation:
    def mutate(data: Any) -> Any:
        for fn in fns:
            data = fn(data)
        return data

    return mutate


def _dup_source(data: Any) -> Any:
    data["sources"].append(copy.deepcopy(data["sources"][0]))
    return data


def _dup_playbook_source(data: Any) -> Any:
    data["sources"].append({"source": "ecfrs-x"})
    return data


FLOOD = "flooding.yaml"

PLAYBOOK_CASES = [
    # policy.yaml
    ConfigCase("policy_bad_timezone", "policy.yaml", setting("timezone", "Mars/Olympus_Mons"),
               ("timezone", "Mars/Olympus_Mons")),
    ConfigCase("policy_start_after_end", "policy.yaml", setting("staffed_hours.start", "18:00"),
               ("staffed_hours", "start must be before end")),
    ConfigCase("policy_unknown_day", "policy.yaml", setting("staffed_hours.days", ["funday"]),
               ("staffed_hours.days",)),
    ConfigCase("policy_hour_25", "policy.yaml", setting("staffed_hours.end", "25:00"),
               ("staffed_hours.end",)),
    ConfigCase("policy_negative_cap", "policy.yaml", setting("weekly_caps.x", -1),
               ("weekly_caps.x",)),
    ConfigCase("policy_cap_unknown_channel", "policy.yaml", setting("weekly_caps.myspace", 3),
               ("weekly_caps.myspace", "unknown channel")),
    ConfigCase("policy_cap_not_a_number", "policy.yaml", setting("weekly_caps.x", "lots"),
               ("weekly_caps.x",)),
    ConfigCase("policy_bad_approval", "policy.yaml", setting("normal_approval", "sometimes"),
               ("normal_approval",)),
    ConfigCase("policy_unknown_key", "policy.yaml", setting("colour", "blue"),
               ("colour", "unknown key")),
    ConfigCase("policy_normal_channel_bad_action", "policy.yaml",
               setting("normal_channels.facebook.action", "retweet"),
               ("normal_channels.facebook.action", "retweet")),
    ConfigCase("policy_normal_channel_unknown", "policy.yaml",
               setting("normal_channels.x.channel", "myspace"),
               ("normal_channels.myspace", "unknown channel")),
    ConfigCase("policy_closure_day_not_a_date", "policy.yaml",
               setting("closure_days", ["next tuesday"]), ("closure_days",)),
    ConfigCase("policy_week_kind", "policy.yaml", setting("week", "fortnight"), ("week",)),
    ConfigCase("policy_top_level_list", "policy.yaml", lambda d: [d], ("(top level)",)),
    ConfigCase("policy_empty", "policy.yaml", raw=b"", expect=("empty",)),
    ConfigCase("policy_invalid_yaml", "policy.yaml", raw=b"timezone: [Europe/London\nweek: x\n",
               expect=("invalid YAML",)),
    ConfigCase("policy_tab_indent", "policy.yaml",
               raw=b"staffed_hours:\n\tstart: '08:00'\n", expect=("invalid YAML",)),
    ConfigCase("policy_duplicate_key", "policy.yaml",
               raw=b"timezone: Europe/London\ntimezone: UTC\n", expect=(":2:", "duplicate key")),
    ConfigCase("policy_invalid_utf8", "policy.yaml", raw=b"timezone: Europe/L\xffndon\n",
               expect=("cannot read",)),
    ConfigCase("policy_python_tag", "policy.yaml",
               raw=b"timezone: !!python/object/apply:os.system ['true']\n",
               expect=("invalid YAML",)),
    # sources.yaml
    ConfigCase("sources_duplicate_id", "sources.yaml", _dup_source,
               ("sources.essex-police-x", "duplicate")),
    ConfigCase("sources_bad_id", "sources.yaml", setting("sources.0.id", "Essex Police!"),
               ("Essex Police!.id",)),
    ConfigCase("sources_unknown_kind", "sources.yaml",
               setting("sources.met-office-ee.kind", "carrier-pigeon"),
               ("sources.met-office-ee.kind",)),
    ConfigCase("sources_rss_without_url", "sources.yaml",
               setting("sources.met-office-ee.url", _DELETE), ("sources.met-office-ee", "url")),
    ConfigCase("sources_x_handle_as_id", "sources.yaml",
               setting("sources.essex-police-x.x_user_id", "@EssexPoliceUK"),
               ("sources.essex-police-x.x_user_id",)),
    ConfigCase("sources_x_without_handle", "sources.yaml",
               setting("sources.ecfrs-x.handle", _DELETE), ("sources.ecfrs-x", "handle")),
    ConfigCase("sources_interval_too_short", "sources.yaml",
               setting("sources.met-office-ee.interval_seconds", 1),
               ("sources.met-office-ee.interval_seconds",)),
    ConfigCase("sources_secret_in_catalogue", "sources.yaml",
               setting("sources.met-office-ee.password", "hunter2"),
               ("sources.met-office-ee.password", "unknown key")),
    ConfigCase("sources_private_flag_not_bool", "sources.yaml",
               setting("sources.met-office-ee.allow_private_network", "perhaps"),
               ("sources.met-office-ee.allow_private_network",)),
    ConfigCase("sources_watch_sometimes", "sources.yaml",
               setting("sources.ea-floods-essex.watch", "sometimes"),
               ("sources.ea-floods-essex.watch",)),
    ConfigCase("sources_not_a_list", "sources.yaml", setting("sources", "everything"),
               ("sources",)),
    ConfigCase("sources_missing", "sources.yaml", lambda d: {"source": d["sources"]},
               ("sources",)),
    # channels.yaml
    ConfigCase("channels_unknown_platform", "channels.yaml",
               setting("channels.x.platform", "myspace"), ("channels.x.platform",)),
    ConfigCase("channels_literal_secret", "channels.yaml",
               setting("channels.facebook.credentials.page_token", "EAAG-real-token-value"),
               ("channels.facebook.credentials.page_token",)),
    ConfigCase("channels_no_account", "channels.yaml",
               setting("channels.bluesky.account", _DELETE), ("channels.bluesky.account",)),
    ConfigCase("channels_duplicate_id", "channels.yaml",
               lambda d: {"channels": d["channels"] + [d["channels"][0]]},
               ("channels.x", "duplicate")),
    # an incident playbook
    ConfigCase("playbook_name_mismatch", FLOOD, setting("name", "floods"), ("name",),
               error=PlaybookError),
    ConfigCase("playbook_lead_not_a_source", FLOOD, setting("default_lead", "met-police"),
               ("default_lead", "met-police"), error=PlaybookError),
    ConfigCase("playbook_allowed_lead_unknown", FLOOD,
               setting("allowed_leads", ["essex-police-x", "nobody"]), ("allowed_leads",
                                                                         "nobody"),
               error=PlaybookError),
    ConfigCase("playbook_unknown_source", FLOOD, setting("sources.eeast-x.source", "mi5-x"),
               ("sources.mi5-x", "unknown source"), error=PlaybookError),
    ConfigCase("playbook_source_twice", FLOOD, _dup_playbook_source,
               ("source listed twice", "ecfrs-x"), error=PlaybookError),
    ConfigCase("playbook_unknown_channel", FLOOD, setting("channels.mastodon.channel", "myspace"),
               ("channels.myspace", "unknown channel"), error=PlaybookError),
    ConfigCase("playbook_boost_on_x", FLOOD, setting("channels.x.action", "boost"),
               ("channels.x.action", "boost"), error=PlaybookError),
    ConfigCase("playbook_unknown_action", FLOOD, setting("channels.x.action", "nuke"),
               ("channels.x.action",), error=PlaybookError),
    ConfigCase("playbook_bad_hashtag", FLOOD, setting("hashtags", ["#1bad tag"]),
               ("hashtags",), error=PlaybookError),
    ConfigCase("playbook_template_field", FLOOD,
               setting("channels.x.template", "{title} {password}"),
               ("channels.x.template", "password"), error=PlaybookError),
    ConfigCase("playbook_ceiling_zero", FLOOD, setting("hourly_ceiling", 0), ("hourly_ceiling",),
               error=PlaybookError),
    ConfigCase("playbook_channel_ceiling_negative", FLOOD,
               setting("channels.facebook.hourly_ceiling", -3),
               ("channels.facebook.hourly_ceiling",), error=PlaybookError),
    ConfigCase("playbook_severity_apocalyptic", FLOOD,
               setting("sources.ea-floods-essex.filters.min_severity", "Apocalyptic"),
               ("sources.ea-floods-essex.filters.min_severity", "Apocalyptic"),
               error=PlaybookError),
    ConfigCase("playbook_filter_unknown_key", FLOOD,
               setting("sources.met-office-ee.filters.regex", ".*"),
               ("sources.met-office-ee.filters.regex", "unknown key"), error=PlaybookError),
    ConfigCase("playbook_approval_yes", FLOOD, setting("approval.lead", "yes"),
               ("approval.lead",), error=PlaybookError),
    ConfigCase("playbook_unknown_key", FLOOD, setting("when", "always"), ("when", "unknown key"),
               error=PlaybookError),
    ConfigCase("playbook_no_channels", FLOOD, setting("channels", _DELETE), ("channels",),
               error=PlaybookError),
    ConfigCase("playbook_backfill_negative", FLOOD, setting("backfill_minutes", -60),
               ("backfill_minutes",), error=PlaybookError),
    ConfigCase("playbook_same_action_twice", FLOOD,
               lambda d: {**d, "channels": d["channels"] + [d["channels"][0]]},
               ("same channel action",), error=PlaybookError),
    ConfigCase("playbook_yaml_error", FLOOD, text=lambda t: t.replace("sources:", "sources: [", 1),
               expect=("invalid YAML",)),
    ConfigCase("playbook_empty", FLOOD, raw=b"# nothing\n", expect=("empty",),
               error=PlaybookError),
    ConfigCase("playbook_scalar", FLOOD, raw=b"just a string\n", expect=("(top level)",),
               error=PlaybookError),
]


def _break_copy(tmp_path: Path, case: ConfigCase, src: Path) -> Path:
    target = tmp_path / case.file
    if case.raw is not None:
        target.write_bytes(case.raw)
    elif case.text is not None:
        target.write_text(case.text(src.read_text()))
    else:
        assert case.mutate is not None
        data = case.mutate(yaml.safe_load(src.read_text()))
        target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target


def assert_one_line_naming(exc: BaseException, path: Path, expect: tuple[str, ...]) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in expect:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", PLAYBOOK_CASES, ids=[c.id for c in PLAYBOOK_CASES])
def test_broken_playbook_file(tmp_path: Path, case: ConfigCase) -> None:
    work = tmp_path / "playbooks"
    shutil.copytree(PLAYBOOKS, work)
    target = _break_copy(work, case, PLAYBOOKS / case.file)
    with pytest.raises(ConfigError) as info:
        load_catalog(work)
    assert isinstance(info.value, case.error), type(info.value)
    assert_one_line_naming(info.value, target, case.expect)


def test_yaml_alias_bomb_in_a_playbook_is_refused_quickly(tmp_path: Path) -> None:
    """A YAML 'billion laughs' (aliases of aliases) must not make validation explode."""
    work = tmp_path / "playbooks"
    shutil.copytree(PLAYBOOKS, work)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("hashtags: *a8")
    (work / FLOOD).write_text("\n".join(lines) + "\n" + (PLAYBOOKS / FLOOD).read_text()
                              .replace("hashtags:", "old_hashtags:"))
    with pytest.raises(ConfigError) as info:
        load_catalog(work)
    assert "\n" not in str(info.value) and str(work / FLOOD) in str(info.value)


# ------------------------------------------------------------------------------ scenarios


def event(data: Any, note: str) -> dict[str, Any]:
    return next(e for e in data["events"] if e.get("note") == note)


def _first_event(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(data: Any) -> Any:
        fn(data["events"][0])
        return data

    return mutate


def _ev(**kv: Any) -> Callable[[dict[str, Any]], None]:
    def apply(e: dict[str, Any]) -> None:
        for k, v in kv.items():
            if v is _DELETE:
                e.pop(k, None)
            else:
                e[k] = v

    return apply


SCENARIO_CASES = [
    ConfigCase("unknown_top_key", "s.yaml", setting("speedup", 10), ("speedup", "unknown key")),
    ConfigCase("naive_start", "s.yaml", setting("start", "2027-05-28T14:00:00"),
               ("start", "UTC offset")),
    ConfigCase("naive_event", "s.yaml",
               _first_event(_ev(at="2027-05-28T14:30:00")), ("events[0].at", "UTC offset")),
    ConfigCase("end_before_start", "s.yaml", setting("end", "2027-05-27T10:00:00+01:00"),
               ("end must be after start",)),
    ConfigCase("event_before_start", "s.yaml",
               _first_event(_ev(at="2027-05-20T14:30:00+01:00")),
               ("events[0].at", "outside start..end")),
    ConfigCase("event_after_end", "s.yaml",
               lambda d: (d["events"][-1].update(at="2027-06-02T00:00:00+01:00"), d)[1],
               ("outside start..end",)),  # the index is checked in the test
    ConfigCase("two_actions", "s.yaml",
               _first_event(_ev(approve={"operator": "x", "reason": "r"})),
               ("events[0]", "exactly one of")),
    ConfigCase("no_action", "s.yaml", _first_event(_ev(publish=_DELETE)),
               ("events[0]", "exactly one of")),
    ConfigCase("unknown_action", "s.yaml",
               _first_event(_ev(publish=_DELETE, explode={"now": True})),
               ("events[0].explode", "unknown key")),
    ConfigCase("publish_without_source", "s.yaml",
               _first_event(_ev(publish={"item": {"guid": "x"}})),
               ("events[0].publish.source",)),
    ConfigCase("publish_item_not_a_mapping", "s.yaml",
               _first_event(_ev(publish={"source": "met-office-ee", "item": "hello"})),
               ("events[0].publish.item",)),
    ConfigCase("event_at_not_a_date", "s.yaml", _first_event(_ev(at="teatime")),
               ("events[0].at",)),
    ConfigCase("event_at_year_99999", "s.yaml",
               _first_event(_ev(at="99999-05-28T14:30:00+01:00")), ("events[0].at",)),
    ConfigCase("unknown_expectation", "s.yaml",
               setting("expectations.0.kind", "everything_fine"),
               # list items are named by their id/source/channel when unique; several
               # expectations share channel x, so the item is named by position
               ("expectations[0].kind", "everything_fine")),
    ConfigCase("expectation_unknown_param", "s.yaml", setting("expectations.0.colour", "red"),
               ("expectations[0].colour", "unknown key")),
    ConfigCase("expectation_negative_window", "s.yaml",
               setting("expectations.0.within_seconds", -5),
               ("expectations[0].within_seconds",)),
    ConfigCase("expectation_min_negative", "s.yaml",
               lambda d: (d["expectations"].append({"kind": "published_count", "min": -1}),
                          d)[1], ("expectations[", "].min")),
    ConfigCase("pin_not_numeric", "s.yaml", setting("pin_x_ids.essex-police-x", "@EssexPoliceUK"),
               ("pin_x_ids.essex-police-x",)),
    ConfigCase("pin_as_list", "s.yaml", setting("pin_x_ids", ["1000001"]), ("pin_x_ids",)),
    ConfigCase("step_zero", "s.yaml", setting("step_seconds", 0), ("step_seconds",)),
    ConfigCase("step_words", "s.yaml", setting("step_seconds", "fast"), ("step_seconds",)),
    ConfigCase("seed_words", "s.yaml", setting("seed", "seven"), ("seed",)),
    ConfigCase("polling_zero", "s.yaml", setting("polling.interval_seconds", 0),
               ("polling.interval_seconds",)),
    ConfigCase("events_not_a_list", "s.yaml", setting("events", {"at": "now"}), ("events",)),
    ConfigCase("no_expectations", "s.yaml", setting("expectations", _DELETE),
               ("expectations", "required")),
    ConfigCase("fault_rate_over_one", "s.yaml",
               lambda d: (event(d, "X starts answering 429 for 20 minutes")["faults"].update(
                   error_rate_5xx=1.5), d)[1], ("faults.error_rate_5xx",)),
    ConfigCase("burst_unknown_platform", "s.yaml",
               lambda d: (event(d, "X starts answering 429 for 20 minutes")["faults"][
                   "burst_429"].update(platform="myspace"), d)[1],
               ("faults.burst_429.platform",)),
    ConfigCase("activate_hashtags_string", "s.yaml",
               lambda d: (event(d, "on-call officer activates flooding")["activate"].update(
                   hashtags=None), d)[1], ("activate.hashtags",)),
    ConfigCase("activate_without_reason", "s.yaml",
               lambda d: (event(d, "on-call officer activates flooding")["activate"].pop(
                   "reason"), d)[1], ("activate.reason", "required")),
    ConfigCase("extra_source_bad_kind", "s.yaml",
               setting("extra_sources.ea-cap-essex.kind", "telegram"),
               ("extra_sources.ea-cap-essex.kind",)),
    ConfigCase("playbook_sources_bad_filter", "s.yaml",
               lambda d: (d["playbook_sources"]["flooding"][0]["filters"].update(
                   min_severity="Apocalyptic"), d)[1],
               ("playbook_sources.flooding.ea-cap-essex.filters.min_severity",)),
    ConfigCase("scenario_yaml_error", "s.yaml", text=lambda t: t.replace("events:", "events: {", 1),
               expect=("invalid YAML",)),
    ConfigCase("scenario_duplicate_key", "s.yaml", text=lambda t: t.replace(
        "seed: 7", "seed: 7\nseed: 8", 1), expect=("duplicate key", "seed")),
    ConfigCase("scenario_empty", "s.yaml", raw=b"", expect=("empty",)),
]


@pytest.mark.parametrize("case", SCENARIO_CASES, ids=[c.id for c in SCENARIO_CASES])
def test_broken_scenario(tmp_path: Path, case: ConfigCase) -> None:
    target = _break_copy(tmp_path, case, SCENARIO)
    expect = case.expect
    if case.id == "event_after_end":
        n = len(yaml.safe_load(SCENARIO.read_text())["events"]) - 1
        expect = (f"events[{n}].at", "outside start..end")
    with pytest.raises(ConfigError) as info:
        load_scenario(target)
    assert_one_line_naming(info.value, target, expect)


def test_pin_for_unknown_source_is_named(tmp_path: Path) -> None:
    """Pins are checked against the catalogue when the drill starts (before any server)."""
    from crisiscomms.drill.runner import Drill

    data = yaml.safe_load(SCENARIO.read_text())
    data["pin_x_ids"]["nobody-x"] = "42"
    data["playbooks_dir"] = str(PLAYBOOKS)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        Drill(load_scenario(path), path, home=tmp_path / "home").run()
    assert_one_line_naming(info.value, path, ("pin_x_ids.nobody-x", "unknown source"))


CONFIG_CASE_COUNT = len(PLAYBOOK_CASES) + len(SCENARIO_CASES) + 2


# ------------------------------------------------------------------ hypothesis: mutated YAML

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12),
                    st.floats(allow_nan=True), st.text(max_size=30),
                    st.sampled_from(["", "x", "#", "{password}", "2027-13-45T99:99:99",
                                     "Europe/Nowhere", "-1", "99999-01-01T00:00:00+00:00"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=6)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent, dict):
        parent[str(value)[:20] or "k"] = value
    else:
        parent[last] = value
    return doc


def _mutations(doc: Any) -> st.SearchStrategy[Any]:
    paths = _paths(doc)
    return st.lists(st.tuples(st.sampled_from(paths), st.sampled_from(["set", "delete", "add"]),
                              VALUES), min_size=1, max_size=3)


def _apply_all(doc: Any, muts: list[tuple[Any, str, Any]]) -> Any:
    for path, op, value in muts:
        try:
            doc = _mutate(doc, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # the path vanished under an earlier mutation
    return doc


FLOOD_DOC = yaml.safe_load((PLAYBOOKS / FLOOD).read_text())
SCENARIO_DOC = yaml.safe_load(SCENARIO.read_text())
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(muts=_mutations(FLOOD_DOC), garble=st.one_of(st.none(), st.integers(0, 3000)))
def test_mutated_playbook_only_raises_project_errors(tmp_path_factory: Any, muts: Any,
                                                     garble: int | None) -> None:
    work = tmp_path_factory.mktemp("pb")
    for name in ("policy.yaml", "sources.yaml", "channels.yaml"):
        shutil.copy(PLAYBOOKS / name, work / name)
    text = yaml.safe_dump(_apply_all(FLOOD_DOC, muts), sort_keys=False)
    if garble is not None:  # and sometimes cut the text, too
        text = text[:garble]
    (work / FLOOD).write_text(text)
    try:
        load_catalog(work)
    except CrisisCommsError as exc:
        assert isinstance(exc, ConfigError)
        assert "\n" not in str(exc) and str(work / FLOOD) in str(exc)


@FUZZ
@given(muts=_mutations(SCENARIO_DOC))
def test_mutated_scenario_only_raises_config_errors(tmp_path_factory: Any, muts: Any) -> None:
    path = tmp_path_factory.mktemp("sc") / "s.yaml"
    path.write_text(yaml.safe_dump(_apply_all(SCENARIO_DOC, muts), sort_keys=False))
    try:
        load_scenario(path)
    except CrisisCommsError as exc:
        assert isinstance(exc, ConfigError)
        assert "\n" not in str(exc) and str(path) in str(exc)
