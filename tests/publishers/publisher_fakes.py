"""Small in-memory platforms behind mocked HTTP, for the publisher tests.

Each fake keeps what was posted so ``find_existing`` can be tested against real state, and has
a queue of injected failures (``faults``) for the next write or read.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import responses
import respx

from crisiscomms.domain.posttext import URL_RE


@dataclass
class Failure:
    status: int = 0
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    exc: BaseException | None = None


class Faults:
    def __init__(self) -> None:
        self.queues: dict[str, list[Failure]] = {"write": [], "read": [], "login": []}

    def add(self, kind: str, failure: Failure) -> None:
        self.queues[kind].append(failure)

    def take(self, kind: str) -> Failure | None:
        queue = self.queues[kind]
        return queue.pop(0) if queue else None


def httpx_failure(failure: Failure) -> httpx.Response:
    if failure.exc is not None:
        raise failure.exc
    return httpx.Response(failure.status, json=failure.body, headers=failure.headers)


# --------------------------------------------------------------------------------------------
# X (tweepy -> requests -> responses)


class FakeX:
    base = "http://127.0.0.1:9/x"
    me = "42"

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.faults = Faults()
        self.tweets: list[dict[str, Any]] = []
        self.retweeted: set[str] = set()
        self.already_retweeted_answer = 403  # or 200: v2 behaviour is undocumented
        self.ids = itertools.count(1000)
        self.requests: list[requests.PreparedRequest] = []
        b = re.escape(self.base)
        rsps.add_callback(responses.POST, re.compile(b + r"/2/tweets$"), callback=self._create)
        rsps.add_callback(
            responses.POST, re.compile(b + r"/2/users/\d+/retweets$"), callback=self._retweet
        )
        rsps.add_callback(responses.GET, re.compile(b + r"/2/users/me\b.*"), callback=self._get_me)
        rsps.add_callback(
            responses.GET, re.compile(b + r"/2/users/\d+/tweets\b.*"), callback=self._timeline
        )

    @staticmethod
    def _answer(failure: Failure) -> Any:
        if failure.exc is not None:
            return failure.exc
        return failure.status, failure.headers, json.dumps(failure.body)

    def _create(self, request: requests.PreparedRequest) -> Any:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return self._answer(failure)
        body = json.loads(request.body or b"{}")
        text = body["text"]
        if any(t["text_sent"] == text for t in self.tweets):
            return (
                403,
                {},
                json.dumps(
                    {
                        "detail": "You are not allowed to create a Tweet with duplicate content.",
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                    }
                ),
            )
        tweet_id = str(next(self.ids))
        # X rewrites links to t.co and escapes &, < and > in the text it returns.
        shown = html.escape(URL_RE.sub("https://t.co/AbCdEf123", text), quote=False)
        tweet: dict[str, Any] = {
            "id": tweet_id,
            "text": shown,
            "text_sent": text,
            "edit_history_tweet_ids": [tweet_id],
        }
        if body.get("quote_tweet_id"):
            tweet["referenced_tweets"] = [{"type": "quoted", "id": body["quote_tweet_id"]}]
        self.tweets.append(tweet)
        answer = {"id": tweet_id, "text": shown, "edit_history_tweet_ids": [tweet_id]}
        return 201, {}, json.dumps({"data": answer})

    def _retweet(self, request: requests.PreparedRequest) -> Any:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return self._answer(failure)
        tweet_id = json.loads(request.body or b"{}")["tweet_id"]
        if tweet_id in self.retweeted and self.already_retweeted_answer == 403:
            return (
                403,
                {},
                json.dumps(
                    {
                        "detail": "You have already retweeted this Tweet.",
                        "status": 403,
                        "title": "Forbidden",
                        "type": "about:blank",
                    }
                ),
            )
        if tweet_id not in self.retweeted:
            self.retweeted.add(tweet_id)
            self.tweets.append(
                {
                    "id": (rt_id := str(next(self.ids))),
                    "text": "RT @source: something",
                    "text_sent": "",
                    "edit_history_tweet_ids": [rt_id],
                    "referenced_tweets": [{"type": "retweeted", "id": tweet_id}],
                }
            )
        return 200, {}, json.dumps({"data": {"retweeted": True}})

    def _get_me(self, request: requests.PreparedRequest) -> Any:
        failure = self.faults.take("read")
        if failure:
            return self._answer(failure)
        return 200, {}, json.dumps({"data": {"id": self.me, "name": "NHS", "username": "nhs"}})

    def _timeline(self, request: requests.PreparedRequest) -> Any:
        failure = self.faults.take("read")
        if failure:
            return self._answer(failure)
        data = [{k: v for k, v in t.items() if k != "text_sent"} for t in reversed(self.tweets)]
        return 200, {}, json.dumps({"data": data, "meta": {"result_count": len(data)}})


# --------------------------------------------------------------------------------------------
# Facebook (httpx -> respx)


class FakeFacebook:
    base = "https://graph.test"
    page = "1234"

    def __init__(self, router: respx.MockRouter) -> None:
        self.faults = Faults()
        self.posts: list[dict[str, str]] = []
        self.requests: list[httpx.Request] = []
        self.ids = itertools.count(1)
        # Any Graph version: the publisher's default moves on as Meta's versions expire.
        root = rf"^{re.escape(self.base)}/v\d+\.\d+/{re.escape(self.page)}"
        router.post(url__regex=rf"{root}/feed$").mock(side_effect=self._create)
        router.get(url__regex=rf"{root}/published_posts(\?.*)?$").mock(side_effect=self._list)

    def _create(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return httpx_failure(failure)
        form = dict(httpx.QueryParams(request.content.decode()))
        post = {"id": f"{self.page}_{next(self.ids)}", "message": form["message"]}
        self.posts.append(post)
        return httpx.Response(200, json={"id": post["id"]})

    def _list(self, request: httpx.Request) -> httpx.Response:
        """The Page's own posts; ``link`` was deprecated in Graph v3.3 (error code 12)."""
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        if "link" in request.url.params.get("fields", "").split(","):
            error = {"message": "(#12) link field is deprecated for versions v3.3 and higher",
                     "type": "OAuthException", "code": 12, "fbtrace_id": "AbCdEf012345"}
            return httpx.Response(400, json={"error": error})
        return httpx.Response(200, json={"data": list(reversed(self.posts))})


# --------------------------------------------------------------------------------------------
# Mastodon (httpx -> respx)


def mastodon_html(text: str) -> str:
    """Roughly what Mastodon renders: links split into spans, hashtags as links."""
    out = []
    pos = 0
    for match in URL_RE.finditer(text):
        out.append(html.escape(text[pos : match.start()]))
        url = match.group()
        scheme, rest = url.split("://", 1)
        out.append(
            f'<a href="{html.escape(url)}" rel="nofollow noopener" target="_blank">'
            f'<span class="invisible">{scheme}://</span><span class="ellipsis">{rest[:30]}</span>'
            f'<span class="invisible">{rest[30:]}</span></a>'
        )
        pos = match.end()
    out.append(html.escape(text[pos:]))
    body = "".join(out)
    body = re.sub(
        r"(^|\s)#(\w+)",
        r'\1<a href="https://m.test/tags/\2" class="mention hashtag" rel="tag">'
        r"#<span>\2</span></a>",
        body,
    )
    return f"<p>{body}</p>"


class FakeMastodon:
    base = "https://m.test"
    account_id = "7"

    def __init__(self, router: respx.MockRouter) -> None:
        self.faults = Faults()
        self.statuses: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.remote: dict[str, str] = {}  # remote URL -> local id
        self.reblogged: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.ids = itertools.count(100)
        b = self.base
        router.post(f"{b}/api/v1/statuses").mock(side_effect=self._create)
        router.post(url__regex=rf"{re.escape(b)}/api/v1/statuses/\w+/reblog").mock(
            side_effect=self._reblog
        )
        router.get(url__regex=rf"{re.escape(b)}/api/v1/statuses/\w+$").mock(
            side_effect=self._status
        )
        router.get(f"{b}/api/v1/accounts/verify_credentials").mock(side_effect=self._me)
        router.get(f"{b}/api/v1/accounts/{self.account_id}/statuses").mock(side_effect=self._mine)
        router.get(f"{b}/api/v2/search").mock(side_effect=self._search)

    def _create(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return httpx_failure(failure)
        key = request.headers.get("Idempotency-Key", "")
        if key and key in self.by_key:
            return httpx.Response(200, json=self.by_key[key])
        body = json.loads(request.content)
        status_id = str(next(self.ids))
        status = {
            "id": status_id,
            "url": f"{self.base}/@nhs/{status_id}",
            "content": mastodon_html(body["status"]),
            "visibility": body.get("visibility"),
        }
        self.statuses.append(status)
        if key:
            self.by_key[key] = status
        return httpx.Response(200, json=status)

    def _reblog(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return httpx_failure(failure)
        local_id = request.url.path.split("/")[-2]
        self.reblogged.add(local_id)
        original = {"id": local_id, "url": f"{self.base}/@police/{local_id}", "reblogged": True}
        boost = {"id": f"rb{local_id}", "reblog": original, "content": ""}
        if all(s["id"] != boost["id"] for s in self.statuses):
            self.statuses.append(boost)
        return httpx.Response(200, json=boost)

    def _status(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        local_id = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(
            200,
            json={
                "id": local_id,
                "url": f"{self.base}/@police/{local_id}",
                "reblogged": local_id in self.reblogged,
            },
        )

    def _me(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        return httpx.Response(200, json={"id": self.account_id, "acct": "nhs"})

    def _mine(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        statuses = list(reversed(self.statuses))
        if request.url.params.get("exclude_reblogs") == "true":
            statuses = [s for s in statuses if not s.get("reblog")]
        return httpx.Response(200, json=statuses)

    def _search(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        local = self.remote.get(request.url.params.get("q", ""))
        statuses = [{"id": local}] if local else []
        return httpx.Response(200, json={"accounts": [], "statuses": statuses, "hashtags": []})


# --------------------------------------------------------------------------------------------
# Bluesky (httpx -> respx)


class FakeBluesky:
    base = "https://pds.test"
    did = "did:plc:nhs"
    official = "did:plc:police"

    def __init__(self, router: respx.MockRouter) -> None:
        self.faults = Faults()
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.sessions = 0
        self.refreshes = 0
        self.tokens = itertools.count(1)
        self.access = ""
        self.refresh = ""
        self.expired: set[str] = set()
        self.duplicate_answer = 500  # what the PDS says for an existing rkey (500 today)
        x = f"{self.base}/xrpc/"
        router.post(x + "com.atproto.server.createSession").mock(side_effect=self._login)
        router.post(x + "com.atproto.server.refreshSession").mock(side_effect=self._refresh)
        router.post(x + "com.atproto.repo.createRecord").mock(side_effect=self._create)
        router.get(x + "com.atproto.repo.getRecord").mock(side_effect=self._get)

    def add_official_post(self, rkey: str = "3kofficial2222") -> tuple[str, str]:
        uri = f"at://{self.official}/app.bsky.feed.post/{rkey}"
        cid = "bafyofficial"
        self.records[(self.official, "app.bsky.feed.post", rkey)] = {
            "uri": uri,
            "cid": cid,
            "value": {"text": "Road closed"},
        }
        return uri, cid

    def _new_tokens(self) -> dict[str, str]:
        n = next(self.tokens)
        self.access, self.refresh = f"access-jwt-{n}", f"refresh-jwt-{n}"
        return {
            "accessJwt": self.access,
            "refreshJwt": self.refresh,
            "did": self.did,
            "handle": "nhs.test",
        }

    def _login(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("login")
        if failure:
            return httpx_failure(failure)
        self.sessions += 1
        return httpx.Response(200, json=self._new_tokens())

    def _refresh(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.refreshes += 1
        if request.headers.get("Authorization") != f"Bearer {self.refresh}":
            return httpx.Response(400, json={"error": "ExpiredToken", "message": "expired"})
        return httpx.Response(200, json=self._new_tokens())

    def _auth_problem(self, request: httpx.Request) -> httpx.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.expired or token != self.access:
            return httpx.Response(400, json={"error": "ExpiredToken", "message": "Token expired"})
        return None

    def _create(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        problem = self._auth_problem(request)
        if problem:
            return problem
        failure = self.faults.take("write")
        if failure:
            return httpx_failure(failure)
        body = json.loads(request.content)
        key = (body["repo"], body["collection"], body["rkey"])
        if key in self.records:
            if self.duplicate_answer == 500:
                return httpx.Response(
                    500, json={"error": "InternalServerError", "message": "Internal Server Error"}
                )
            return httpx.Response(
                self.duplicate_answer,
                json={"error": "RecordAlreadyExists", "message": "Record already exists"},
            )
        uri = f"at://{key[0]}/{key[1]}/{key[2]}"
        cid = "bafy" + hashlib.sha256(request.content).hexdigest()[:20]
        self.records[key] = {"uri": uri, "cid": cid, "value": body["record"]}
        return httpx.Response(200, json={"uri": uri, "cid": cid})

    def _get(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        p = request.url.params
        record = self.records.get((p["repo"], p["collection"], p["rkey"]))
        if record is None:
            return httpx.Response(400, json={"error": "RecordNotFound", "message": "not found"})
        return httpx.Response(200, json=record)
