"""Ordered schema migrations. Append only: never edit a released migration.

Each migration runs in one transaction together with its row in ``schema_migrations``, so an
interrupted upgrade leaves the previous version intact and is simply re-run.
"""

from __future__ import annotations

SQLITE_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    playbook TEXT NOT NULL,
    hashtags TEXT NOT NULL,
    lead TEXT NOT NULL,
    activated_at TEXT NOT NULL,
    activated_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    deactivated_at TEXT,
    deactivated_by TEXT,
    deactivation_reason TEXT
);
CREATE UNIQUE INDEX incidents_one_active_per_playbook
    ON incidents(playbook) WHERE deactivated_at IS NULL;

CREATE TABLE source_state (
    key TEXT PRIMARY KEY,
    cursor TEXT,
    etag TEXT,
    last_modified TEXT,
    baseline_done INTEGER NOT NULL DEFAULT 0,
    last_polled_at TEXT,
    next_poll_at TEXT,
    last_ok_at TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_class TEXT,
    error_count INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE updates (
    id INTEGER PRIMARY KEY,
    source_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    agency TEXT NOT NULL,
    url TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    published_at TEXT NOT NULL,
    fetched_at TEXT NOT NULL,
    cap TEXT,
    native TEXT,
    baseline INTEGER NOT NULL DEFAULT 0,
    disposition TEXT NOT NULL DEFAULT '',
    UNIQUE (source_id, external_id, revision)
);
CREATE INDEX updates_by_source_time ON updates(source_id, published_at);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    channel_id TEXT NOT NULL,
    action TEXT NOT NULL,
    text TEXT NOT NULL,
    edited_text TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    update_id INTEGER REFERENCES updates(id),
    incident_id INTEGER REFERENCES incidents(id),
    source_id TEXT,
    is_lead INTEGER NOT NULL DEFAULT 0,
    severity_rank INTEGER NOT NULL DEFAULT 0,
    published_at TEXT,
    approval TEXT NOT NULL DEFAULT 'auto',
    approved_by TEXT,
    approved_at TEXT,
    not_before TEXT,
    lease_owner TEXT,
    lease_until TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    last_error TEXT,
    platform_post_id TEXT,
    platform_url TEXT,
    sent_at TEXT,
    done_at TEXT,
    out_of_hours INTEGER NOT NULL DEFAULT 0,
    over_cap INTEGER NOT NULL DEFAULT 0,
    native TEXT,
    url TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_by_state ON outbox(state, channel_id);
CREATE INDEX outbox_by_done ON outbox(channel_id, done_at) WHERE state = 'published';

CREATE TABLE outbox_events (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES outbox(id),
    at TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT 'system',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX outbox_events_by_item ON outbox_events(item_id, id);

CREATE TABLE channel_state (
    channel_id TEXT PRIMARY KEY,
    paused_until TEXT,
    last_error TEXT,
    rate_limit_waits INTEGER NOT NULL DEFAULT 0,
    rate_limit_wait_seconds REAL NOT NULL DEFAULT 0
);

CREATE TABLE live_windows (
    id INTEGER PRIMARY KEY,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
""",
    ),
    (
        2,
        "outbox_by_update",
        """
-- "Was this update already relayed on this channel?" is asked before every publish.
CREATE INDEX outbox_by_update ON outbox(update_id, channel_id) WHERE state = 'published';
""",
    ),
    (
        3,
        "outbox_lookups",
        """
-- How often the platform was asked, without an answer, whether an item already went out.
ALTER TABLE outbox ADD COLUMN lookups INTEGER NOT NULL DEFAULT 0;
""",
    ),
    (
        4,
        "fencing_and_watchers",
        """
-- Every stored change of an item bumps its version; every claim or take-over its fencing token.
ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
-- A source is polled under a lease too, so two watchers never poll it in the same interval.
ALTER TABLE source_state ADD COLUMN lease_owner TEXT;
ALTER TABLE source_state ADD COLUMN lease_until TEXT;
ALTER TABLE source_state ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
CREATE TABLE watchers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
-- The chain's head exists from the start, so appending only ever updates it.
INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '""" + "0" * 64 + """'
    WHERE NOT EXISTS (SELECT 1 FROM audit_head);
""",
    ),
    (
        5,
        "outbox_expires",
        """
-- A CAP alert's expires, carried by its items: an alert past it is never sent.
ALTER TABLE outbox ADD COLUMN expires_at TEXT;
""",
    ),
    (
        6,
        "outbox_reply_to_item",
        """
-- A CAP Update or Cancel goes out as a reply to our own item of the alert it refers to.
ALTER TABLE outbox ADD COLUMN reply_to_item INTEGER REFERENCES outbox(id);
""",
    ),
    (
        7,
        "channel_problem",
        """
-- Why a channel cannot post at all (its credentials are missing): status shows it as broken.
ALTER TABLE channel_state ADD COLUMN problem TEXT;
""",
    ),
    (
        8,
        "audit_wall_time_and_scheme",
        """
-- The real wall-clock time each audit event was written (beside the 'at' it claims, which
-- --at may have frozen), and the scheme that hashed it (old rows: plain SHA-256).
ALTER TABLE audit_events ADD COLUMN recorded_at TEXT;
ALTER TABLE audit_events ADD COLUMN scheme TEXT NOT NULL DEFAULT 'sha256';
""",
    ),
    (
        9,
        "watchers_pages",
        """
-- Whether a watcher can page the on-call team (notify URLs, the real clock): the pager is
-- elected among those that can. Heartbeats of older versions: they cannot.
ALTER TABLE watchers ADD COLUMN pages INTEGER NOT NULL DEFAULT 0;
""",
    ),
    (
        10,
        "watchers_push",
        """
-- How each of a watcher's push connections is (JSON list; status shows it). Older: none.
ALTER TABLE watchers ADD COLUMN push TEXT;
""",
    ),
]

# PostgreSQL: the same schema in its own types (instants are timestamptz, ids identities).
# Versions match SQLite's, so `status` and the upgrade rules read the same on both.
POSTGRES_MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
CREATE TABLE incidents (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    playbook TEXT NOT NULL,
    hashtags TEXT NOT NULL,
    lead TEXT NOT NULL,
    activated_at TIMESTAMPTZ NOT NULL,
    activated_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    deactivated_at TIMESTAMPTZ,
    deactivated_by TEXT,
    deactivation_reason TEXT
);
CREATE UNIQUE INDEX incidents_one_active_per_playbook
    ON incidents(playbook) WHERE deactivated_at IS NULL;

CREATE TABLE source_state (
    key TEXT PRIMARY KEY,
    cursor TEXT,
    etag TEXT,
    last_modified TEXT,
    baseline_done INTEGER NOT NULL DEFAULT 0,
    last_polled_at TIMESTAMPTZ,
    next_poll_at TIMESTAMPTZ,
    last_ok_at TIMESTAMPTZ,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_class TEXT,
    error_count INTEGER NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE updates (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    source_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    agency TEXT NOT NULL,
    url TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    cap TEXT,
    native TEXT,
    baseline INTEGER NOT NULL DEFAULT 0,
    disposition TEXT NOT NULL DEFAULT '',
    UNIQUE (source_id, external_id, revision)
);
CREATE INDEX updates_by_source_time ON updates(source_id, published_at);

CREATE TABLE outbox (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    channel_id TEXT NOT NULL,
    action TEXT NOT NULL,
    text TEXT NOT NULL,
    edited_text TEXT,
    state TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    update_id BIGINT REFERENCES updates(id),
    incident_id BIGINT REFERENCES incidents(id),
    source_id TEXT,
    is_lead INTEGER NOT NULL DEFAULT 0,
    severity_rank INTEGER NOT NULL DEFAULT 0,
    published_at TIMESTAMPTZ,
    approval TEXT NOT NULL DEFAULT 'auto',
    approved_by TEXT,
    approved_at TIMESTAMPTZ,
    not_before TIMESTAMPTZ,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    last_error TEXT,
    platform_post_id TEXT,
    platform_url TEXT,
    sent_at TIMESTAMPTZ,
    done_at TIMESTAMPTZ,
    out_of_hours INTEGER NOT NULL DEFAULT 0,
    over_cap INTEGER NOT NULL DEFAULT 0,
    native TEXT,
    url TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_by_state ON outbox(state, channel_id);
CREATE INDEX outbox_by_done ON outbox(channel_id, done_at) WHERE state = 'published';

CREATE TABLE outbox_events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    item_id BIGINT NOT NULL REFERENCES outbox(id),
    at TIMESTAMPTZ NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT 'system',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX outbox_events_by_item ON outbox_events(item_id, id);

CREATE TABLE channel_state (
    channel_id TEXT PRIMARY KEY,
    paused_until TIMESTAMPTZ,
    last_error TEXT,
    rate_limit_waits INTEGER NOT NULL DEFAULT 0,
    rate_limit_wait_seconds DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE live_windows (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    starts_at TIMESTAMPTZ NOT NULL,
    ends_at TIMESTAMPTZ NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
""",
    ),
    (
        2,
        "outbox_by_update",
        "CREATE INDEX outbox_by_update ON outbox(update_id, channel_id) "
        "WHERE state = 'published';",
    ),
    (
        3,
        "outbox_lookups",
        "ALTER TABLE outbox ADD COLUMN lookups INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        4,
        "fencing_and_watchers",
        """
ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE source_state ADD COLUMN lease_owner TEXT;
ALTER TABLE source_state ADD COLUMN lease_until TIMESTAMPTZ;
ALTER TABLE source_state ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
CREATE TABLE watchers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '""" + "0" * 64 + """');
""",
    ),
    (
        5,
        "outbox_expires",
        "ALTER TABLE outbox ADD COLUMN expires_at TIMESTAMPTZ;",
    ),
    (
        6,
        "outbox_reply_to_item",
        "ALTER TABLE outbox ADD COLUMN reply_to_item BIGINT REFERENCES outbox(id);",
    ),
    (
        7,
        "channel_problem",
        "ALTER TABLE channel_state ADD COLUMN problem TEXT;",
    ),
    (
        8,
        "audit_wall_time_and_scheme",
        """
ALTER TABLE audit_events ADD COLUMN recorded_at TIMESTAMPTZ;
ALTER TABLE audit_events ADD COLUMN scheme TEXT NOT NULL DEFAULT 'sha256';
""",
    ),
    (
        9,
        "watchers_pages",
        "ALTER TABLE watchers ADD COLUMN pages INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        10,
        "watchers_push",
        "ALTER TABLE watchers ADD COLUMN push TEXT;",
    ),
]
