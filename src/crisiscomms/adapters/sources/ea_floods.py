"""Environment Agency flood-monitoring warnings (JSON, ``/flood-monitoring/id/floods``).

The source's ``url`` is the ``/id/floods`` endpoint; ``county`` (from the source config)
is sent as ``?county=``. One update per (floodAreaID, severityLevel, timeMessageChanged):
that triple is the external id, so a re-issued message or a change of level is a new
update while repeats of the same message are not.

Times (``timeRaised``, ``timeMessageChanged``, ``timeSeverityChanged``) carry no offset and
are read as **UTC**, never as UK civil time. The Environment Agency documents its real-time
flood-monitoring API at environment.data.gov.uk/flood-monitoring/doc/reference; the
tide-gauge page of the same API (doc/tidegauge, its data "integrated into" that API) says
"all times given by the API are in GMT (also known as UTC)". The warnings come from the
Flood Warning System, whose own API (DEFRA fws-api) also gives its times in UTC (with a
``Z``). So ``2026-07-15T10:00:00`` is 10:00 UTC (11:00 BST): reading it as Europe/London
would date every summer warning an hour early. Times written inside the ``message`` text
are local time (the EA's messages say so); they are text, never parsed.
Times with an explicit offset or ``Z`` are honoured as given.

severityLevel -> CapInfo, mapped by what CAP's own words mean so ``min_severity`` filters
behave (change ``SEVERITY_MAP`` if the playbooks want something else):

======  =========================  ========  =========  =========  ========
level   EA meaning                 severity  urgency    certainty  msg_type
======  =========================  ========  =========  =========  ========
1       Severe flood warning       Extreme   Immediate  Likely     Alert
2       Flood warning              Severe    Expected   Likely     Alert
3       Flood alert                Moderate  Expected   Possible   Alert
4       Warning no longer in force Minor     Past       Observed   Cancel
======  =========================  ========  =========  =========  ========
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crisiscomms.adapters.sources.base import as_dict, as_list, as_str, decode_json, source_boundary
from crisiscomms.adapters.sources.http import DEFAULT_MAX_BYTES, HttpFetcher, record_move
from crisiscomms.adapters.sources.rss import not_modified_result
from crisiscomms.adapters.sources.text import tidy
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import PermanentSourceError
from crisiscomms.domain.models import CapInfo, PollResult, SourceKind, SourceState, Update

SENDER = "Environment Agency"
PUBLIC_PAGE = "https://check-for-flooding.service.gov.uk/target-area/{area}"
# level -> (severity, urgency, certainty, msg_type, default label)
SEVERITY_MAP: dict[int, tuple[str, str, str, str, str]] = {
    1: ("Extreme", "Immediate", "Likely", "Alert", "Severe flood warning"),
    2: ("Severe", "Expected", "Likely", "Alert", "Flood warning"),
    3: ("Moderate", "Expected", "Possible", "Alert", "Flood alert"),
    4: ("Minor", "Past", "Observed", "Cancel", "Warning no longer in force"),
}


def ea_time_to_utc(value: object) -> datetime | None:
    """An EA timestamp as aware UTC: without an offset it is UTC (see the module docstring)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def flood_update(item: dict[str, Any], config: SourceConfig, now: datetime) -> Update | None:
    """One EA flood item as an ``Update``, or ``None`` if it lacks the identifying fields."""
    area_id = as_str(item.get("floodAreaID"), 100).strip()
    level = item.get("severityLevel")
    if isinstance(level, str) and level.strip().isdigit():
        level = int(level.strip())
    changed_raw = as_str(item.get("timeMessageChanged"), 40).strip()
    if not area_id or not isinstance(level, int) or isinstance(level, bool) or not changed_raw:
        return None
    severity, urgency, certainty, msg_type, label = SEVERITY_MAP.get(
        level, ("Unknown", "Unknown", "Unknown", "Alert", "Flood message")
    )
    label = tidy(as_str(item.get("severity"), 200)) or label
    description = tidy(as_str(item.get("description"), 500))
    area_name = tidy(as_str(item.get("eaAreaName"), 200))
    external_id = f"{area_id}:{level}:{changed_raw}"
    changed = ea_time_to_utc(changed_raw)
    title = f"{label}: {description}" if description else f"{label}: {area_id}"
    message = tidy(as_str(item.get("message"), 20_000))
    cap = CapInfo(
        identifier=external_id, sender=SENDER, sent=changed, status="Actual",
        msg_type=msg_type, scope="Public", event=label, severity=severity, urgency=urgency,
        certainty=certainty, area="; ".join(p for p in (description, area_name) if p),
    )
    return Update(
        source_id=config.id, agency=config.agency, kind=SourceKind.EA_FLOODS,
        external_id=external_id, url=PUBLIC_PAGE.format(area=area_id), title=title,
        text=message or title, published_at=changed or now, fetched_at=now, cap=cap,
    ).with_hash()


class EaFloodsSource:
    """Flood warnings in force for one county (``SourceKind.EA_FLOODS``)."""

    def __init__(
        self, config: SourceConfig, fetcher: HttpFetcher, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """GET the floods endpoint for the county and return one update per message."""
        with source_boundary(self.key):
            sid = self.key
            params = {"county": self.config.county} if self.config.county else None
            response = await self._fetcher.fetch(
                self.config.url or "", source_id=sid, etag=state.etag,
                last_modified=state.last_modified, max_bytes=self._max_bytes,
                allow_private=self.config.allow_private_network, params=params,
                accept="application/json", now=now,
            )
            if response.not_modified:
                return not_modified_result(state, response)
            data = decode_json(response.body, source_id=sid, what="flood-monitoring JSON")
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise PermanentSourceError(
                    f"{sid}: flood-monitoring JSON without an 'items' list",
                    source_id=sid, error_class="parse",
                )
            updates: dict[str, Update] = {}
            for raw in as_list(items):
                update = flood_update(as_dict(raw), self.config, now)
                if update is not None:
                    updates.setdefault(update.external_id, update)
            return PollResult(
                updates=tuple(updates.values()), etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"), cursor=state.cursor,
                extra=record_move(state.extra, response), hints=response.hints,
            )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""
