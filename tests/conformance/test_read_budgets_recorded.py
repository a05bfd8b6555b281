"""Adaptive polling reads the platforms' read budgets from their answers' headers: the headers
as X and Mastodon really sent them (shared/recorded), not as the simulator writes them."""

from __future__ import annotations

from datetime import UTC, datetime

from crisiscomms.adapters.sources import http
from crisiscomms.adapters.sources import x as x_source

from .cassettes import interaction


def test_x_recent_search_budget_as_recorded() -> None:
    """shared/recorded/x/test_client_search_recent_tweets.yaml: x-rate-limit-remaining 448,
    x-rate-limit-reset 1665183229 (epoch seconds)."""
    rec = interaction("x/test_client_search_recent_tweets.yaml", "GET", "/2/tweets/search/recent")
    budgets = x_source.read_budgets(rec.headers)
    assert any(b.remaining == int(rec.headers["x-rate-limit-remaining"]) and
               b.reset_at == datetime.fromtimestamp(int(rec.headers["x-rate-limit-reset"]), UTC)
               for b in budgets), (rec.name, budgets)


def test_mastodon_budget_as_recorded() -> None:
    """shared/recorded/mastodon/test_account_lookup.yaml: X-RateLimit-Remaining 299,
    X-RateLimit-Reset an ISO-8601 instant with microseconds."""
    rec = interaction("mastodon/test_account_lookup.yaml", "GET", "/api/v1/accounts/lookup")
    (budget,) = http.read_budgets(rec.headers)
    assert budget.remaining == int(rec.headers["x-ratelimit-remaining"])
    reset = datetime.fromisoformat(rec.headers["x-ratelimit-reset"].replace("Z", "+00:00"))
    assert budget.reset_at == reset, rec.name
