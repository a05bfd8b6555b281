"""The Apprise adapter against real local receivers: json:// over loopback HTTP, mailto://
through a local SMTP server; a target that is down; no token ever in a log."""

from __future__ import annotations

import email
import io
import logging

import pytest
from pydantic import SecretStr

from crisiscomms.adapters.notify import AppriseNotifier, url_secrets, with_timeouts
from crisiscomms.logs import configure, redact_text
from tests.notify.receivers import closed_port, json_receiver, smtp_server


def test_json_target_receives_title_body_and_urgency():
    with json_receiver() as rx:
        n = AppriseNotifier([SecretStr(rx.url("/oncall"))], timeout=5)
        out = n.send("[URGENT] crisiscomms: 1 item needs approval",
                     "crisiscomms queue approve 42 --reason \"...\"", "urgent")
        assert out == [("1 (json)", True, "")]
        post = rx.wait_for(1)[0]
    assert post["path"] == "/oncall"
    assert post["body"]["title"] == "[URGENT] crisiscomms: 1 item needs approval"
    assert "crisiscomms queue approve 42" in post["body"]["message"]
    assert post["body"]["type"] == "failure"  # urgent


def test_mailto_target_through_a_local_smtp_server():
    with smtp_server() as box:
        url = (f"mailto://127.0.0.1:{box.port}?smtp=127.0.0.1&mode=insecure"
               "&from=crisiscomms@example.test&to=oncall@example.test")
        n = AppriseNotifier([SecretStr(url)], timeout=5)
        out = n.send("[HIGH] crisiscomms: source failing", "source x failing\n$ crisiscomms "
                     "status", "high")
        assert out == [("1 (mailto)", True, "")]
        msg = box.wait_for(1)[0]
    assert msg["to"] == ["oncall@example.test"]
    parsed = email.message_from_string(msg["data"])
    assert "source failing" in parsed["Subject"]
    payload = parsed.get_payload(decode=True) if not parsed.is_multipart() else \
        parsed.get_payload()[0].get_payload(decode=True)
    assert b"crisiscomms status" in payload


def test_a_target_that_is_down_is_reported_without_its_secret():
    port = closed_port()
    token = "tok-Zq9xVv81kLmN"
    with json_receiver() as rx:
        n = AppriseNotifier([SecretStr(f"json://127.0.0.1:{port}/{token}"),
                             SecretStr(rx.url())], timeout=2)
        out = n.send("t", "b", "info")
    assert out[0][0] == "1 (json)" and out[0][1] is False
    assert out[0][2] and token not in out[0][2]
    assert out[1] == ("2 (json)", True, "")


def test_an_url_apprise_does_not_know_is_a_failing_target_not_a_crash():
    n = AppriseNotifier([SecretStr("nosuchservice://secret-token-123456")], timeout=1)
    out = n.send("t", "b", "info")
    assert out == [("1 (nosuchservice)", False, "not a URL Apprise understands (see its list "
                                                "of services)")]


def test_timeouts_are_added_unless_the_url_sets_them():
    assert "cto=3" in with_timeouts("json://h/p", 3) and "rto=3" in with_timeouts("json://h/p", 3)
    assert "cto=9" in with_timeouts("json://h/p?cto=9", 3)
    assert with_timeouts("json://h/p?cto=9", 3).count("cto=") == 1


def test_url_secrets_cover_password_path_and_query_tokens():
    parts = url_secrets("json://user:p4ssw0rd@host:8/hooks/tok_ABCDEFGH?apikey=K3YK3YK3Y")
    assert {"p4ssw0rd", "tok_ABCDEFGH", "K3YK3YK3Y"} <= set(parts)
    assert "host:8" not in parts and "hooks" not in parts  # short words stay readable
    assert "T1JJ3T3L2" in url_secrets("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    assert {"uQiRzpo4DXghDmr9QzzfQu27cmVRsG", "azGDORePK8gMaC0QOYAMyEEuzJnyUi"} <= set(
        url_secrets("pover://uQiRzpo4DXghDmr9QzzfQu27cmVRsG@azGDORePK8gMaC0QOYAMyEEuzJnyUi"))
    # Ordinary values stay readable: masking them would mask them in every log line.
    mail = url_secrets("mailto://mailer:Pw-123456@127.0.0.1:2525?smtp=127.0.0.1&mode=insecure"
                       "&from=crisiscomms@example.test&to=oncall@example.test")
    assert "Pw-123456" in mail
    assert not {"127.0.0.1", "insecure", "crisiscomms@example.test", "oncall@example.test",
                "mailer"} & set(mail)


def test_the_url_as_apprise_is_given_it_is_masked_short_and_padded_tokens_too():
    """``with_timeouts`` re-encodes the query (``=`` becomes ``%3D``): a padded base64 token
    in that form, and a short value of a secret parameter (``pass``), are masked as well."""
    url = "json://127.0.0.1:9/hook?pass=Zq7x&k=QUJDREVGR0g=&format=text"
    AppriseNotifier([SecretStr(url)], timeout=3)
    seen = with_timeouts(url, 3)
    assert "QUJDREVGR0g%3D" in seen  # the form Apprise is given
    for piece in (seen, "QUJDREVGR0g%3D", "QUJDREVGR0g=", "Zq7x"):
        assert piece not in redact_text(f"apprise: {piece} !"), piece
    assert "Zq7x" in url_secrets(url) and "text" not in url_secrets(url)
    assert "hook" not in url_secrets(url)  # short path words stay readable


@pytest.mark.parametrize("reachable", [True, False])
def test_no_token_in_any_log_with_debug_logging(reachable, caplog, capsys):
    """DEBUG logging on, Apprise's own loggers included: the password, the path token and the
    query token never appear in the log stream, in caplog or on stderr."""
    secrets = ["pw-9f8e7d6c5b", "pathtok-1a2b3c4d5e", "qtok-0z9y8x7w6v"]
    stream = io.StringIO()
    configure("debug", "json", stream)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("apprise").setLevel(logging.DEBUG)
    try:
        with json_receiver() as rx:
            port = rx.port if reachable else closed_port()
            url = (f"json://oncall:{secrets[0]}@127.0.0.1:{port}/{secrets[1]}"
                   f"?token={secrets[2]}")
            out = AppriseNotifier([SecretStr(url)], timeout=2).send("title", "body", "high")
            assert out[0][1] is reachable
            if reachable:
                assert rx.wait_for(1)[0]["path"].startswith(f"/{secrets[1]}")  # really sent
    finally:
        logging.getLogger("apprise").setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    logged = stream.getvalue() + caplog.text + captured.err + captured.out + str(out)
    assert "apprise" in caplog.text.lower() or "json" in caplog.text.lower()  # it did log
    for s in secrets:
        assert s not in logged, s
