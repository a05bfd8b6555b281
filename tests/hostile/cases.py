"""The hostile feed cases: committed files (truncated fixtures, the sources corpus) plus
cases generated at test time (bombs, ReDoS, huge bodies, wrong encodings, crossed formats,
absurd CAP documents).

A ``Case`` names the adapters it is aimed at; ``body()`` builds the bytes lazily so that
collecting the tests allocates nothing big.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crisiscomms.domain.models import SourceKind

HERE = Path(__file__).parent
TRUNCATED = HERE / "truncated"
SOURCES_DIR = HERE.parent / "sources"
FIXTURES = SOURCES_DIR / "fixtures"
CORPUS = SOURCES_DIR / "corpus"

RSS, CAP, EA, MASTO, BSKY = (SourceKind.RSS, SourceKind.CAP, SourceKind.EA_FLOODS,
                             SourceKind.MASTODON, SourceKind.BLUESKY)
FEEDS = (RSS, CAP)
JSON_APIS = (EA, MASTO, BSKY)
ALL = (*FEEDS, *JSON_APIS)


@dataclass(frozen=True)
class Case:
    id: str
    kinds: tuple[SourceKind, ...]
    make: Callable[[], bytes]
    headers: dict[str, str] = field(default_factory=dict)
    group: str = ""
    big: bool = False  # generated bodies over a megabyte (skipped by the watcher flood)

    def body(self) -> bytes:
        return self.make()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


CT = {".json": "application/json", ".html": "text/html", ".txt": "text/plain",
      ".png": "image/png", ".atom": "application/atom+xml", ".xml": "application/xml"}


def _kinds_for_truncated(name: str) -> tuple[SourceKind, ...]:
    if name.startswith("ea_"):
        return (EA,)
    if name.startswith("mastodon_"):
        return (MASTO,)
    if name.startswith("bluesky_"):
        return (BSKY,)
    if name.startswith("cap_"):
        return (CAP, RSS)
    return (RSS, CAP)


def truncated_cases() -> list[Case]:
    return [
        Case(f"truncated/{p.name}", _kinds_for_truncated(p.name), _file(p),
             {"content-type": CT.get(p.suffix, "application/xml")}, "truncated")
        for p in sorted(TRUNCATED.iterdir()) if p.is_file()
    ]


def corpus_cases() -> list[Case]:
    """The other helper's 62 files, reused by path (they already run through every adapter
    in tests/sources; here they also join the watcher flood)."""
    return [
        Case(f"corpus/{p.name}", ALL, _file(p), {"content-type": CT.get(p.suffix,
                                                                        "application/xml")},
             "corpus")
        for p in sorted(CORPUS.iterdir()) if p.is_file()
    ]


# ------------------------------------------------------------------------ bombs and ReDoS

RSS_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def rss(items: bytes, head: bytes = RSS_HEAD, doctype: bytes = b"") -> bytes:
    return (head + doctype + b'<rss version="2.0"><channel><title>t</title>'
            b"<link>https://example.gov.uk/</link>" + items + b"</channel></rss>")


def item(title: bytes = b"t", guid: bytes = b"g1", desc: bytes = b"d", extra: bytes = b"") -> bytes:
    return (b"<item><title>" + title + b"</title><guid>" + guid + b"</guid><description>" + desc
            + b"</description>" + extra + b"</item>")


def billion_laughs(levels: int = 10) -> bytes:
    ents = [b'<!ENTITY lol0 "lol">']
    for i in range(1, levels):
        refs = b"&lol%d;" % (i - 1) * 10
        ents.append(b'<!ENTITY lol%d "%s">' % (i, refs))
    doctype = b"<!DOCTYPE rss [" + b"".join(ents) + b"]>"
    return rss(item(title=b"&lol%d;" % (levels - 1)), doctype=doctype)


def quadratic_blowup(size: int = 200_000, refs: int = 20_000) -> bytes:
    doctype = b'<!DOCTYPE rss [<!ENTITY a "' + b"x" * size + b'">]>'
    return rss(item(desc=b"&a;" * refs), doctype=doctype)


def param_entity_chain() -> bytes:
    doctype = (b'<!DOCTYPE rss [<!ENTITY % p1 "<!ENTITY &#37; p2 \'boom\'>"> %p1; '
               b'<!ENTITY e SYSTEM "file:///etc/passwd">]>')
    return rss(item(desc=b"&e;"), doctype=doctype)


def redos_author(n: int = 30_000) -> bytes:
    """kurtmckee/feedparser#562: the author e-mail regex backtracks on a@a.a.a.a...!"""
    author = b"a@" + b"a." * n + b"!"
    return rss(item(extra=b"<author>" + author + b"</author>"))


def redos_atom_author(n: int = 30_000) -> bytes:
    author = b"x@" + b"b." * n + b"?"
    return (b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            b"<title>t</title><id>urn:f</id><updated>2026-02-10T12:00:00Z</updated>"
            b"<entry><title>e</title><id>urn:e</id><updated>2026-02-10T12:00:00Z</updated>"
            b"<author><name>" + author + b"</name></author></entry></feed>")


def gzip_bomb(megabytes: int = 64) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join([comp.compress(chunk) for _ in range(megabytes)] + [comp.flush()])


def deflate_bomb(megabytes: int = 64, raw: bool = False) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    chunk = b" " * (1 << 20)
    return b"".join([comp.compress(chunk) for _ in range(megabytes)] + [comp.flush()])


def bomb_cases() -> list[Case]:
    xml = {"content-type": "application/rss+xml"}
    return [
        Case("bomb/billion_laughs", FEEDS, billion_laughs, xml, "bomb"),
        Case("bomb/billion_laughs_20_levels", FEEDS, lambda: billion_laughs(20), xml, "bomb"),
        Case("bomb/quadratic_blowup_4gb", FEEDS, quadratic_blowup, xml, "bomb"),
        Case("bomb/parameter_entity_xxe", FEEDS, param_entity_chain, xml, "bomb"),
        Case("bomb/gzip_64mb_feed", (RSS, EA), gzip_bomb,
             {"content-type": "application/rss+xml", "content-encoding": "gzip"}, "bomb"),
        Case("bomb/gzip_64mb_json", (MASTO, BSKY), gzip_bomb,
             {"content-type": "application/json", "content-encoding": "gzip"}, "bomb"),
        Case("bomb/deflate_64mb", (CAP, EA), deflate_bomb,
             {"content-type": "application/xml", "content-encoding": "deflate"}, "bomb"),
        Case("bomb/raw_deflate_64mb", (RSS,), lambda: deflate_bomb(raw=True),
             {"content-type": "application/xml", "content-encoding": "deflate"}, "bomb"),
        Case("bomb/gzip_of_gzip", (RSS, EA), lambda: gzip.compress(gzip.compress(
            rss(item()) + b" " * 10_000_000, 9), 9),
             {"content-type": "application/xml", "content-encoding": "gzip"}, "bomb"),
        Case("bomb/corrupt_gzip", ALL, lambda: b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4,
             {"content-type": "application/xml", "content-encoding": "gzip"}, "bomb"),
        Case("bomb/unknown_content_encoding", ALL, lambda: rss(item()),
             {"content-type": "application/xml", "content-encoding": "br"}, "bomb"),
        Case("bomb/concatenated_gzip_members", (RSS,), lambda: gzip.compress(rss(item()))
             + gzip.compress(b"<junk/>"), {"content-type": "application/xml",
                                            "content-encoding": "gzip"}, "bomb"),
        Case("redos/author_email_rss", FEEDS, redos_author, xml, "redos"),
        Case("redos/author_name_atom", FEEDS, redos_atom_author,
             {"content-type": "application/atom+xml"}, "redos"),
    ]


# ------------------------------------------------------------------------------ huge bodies


def huge_cases() -> list[Case]:
    xml = {"content-type": "application/rss+xml"}
    return [
        Case("huge/rss_6mb_over_cap", FEEDS, lambda: rss(item(desc=b"x" * 6_000_000)), xml,
             "huge", big=True),
        Case("huge/rss_4mb_one_description", FEEDS, lambda: rss(item(desc=b"y " * 2_000_000)),
             xml, "huge", big=True),
        Case("huge/rss_20000_items", FEEDS, lambda: rss(b"".join(
            item(title=b"t%d" % i, guid=b"g%d" % i) for i in range(20_000))), xml, "huge",
             big=True),
        Case("huge/rss_1mb_title", FEEDS, lambda: rss(item(title=b"T" * 1_000_000)), xml,
             "huge"),
        Case("huge/rss_deep_nesting_100k", FEEDS, lambda: rss(item(
            desc=b"<![CDATA[" + b"<div>" * 100_000 + b"]]>")), xml, "huge"),
        Case("huge/content_length_lies", ALL, lambda: rss(item()),
             {"content-type": "application/xml", "content-length": "99999999999"}, "huge"),
        Case("huge/json_ea_6mb", (EA,), lambda: json.dumps(
            {"items": [{"description": "x" * 6_000_000}]}).encode(),
             {"content-type": "application/json"}, "huge", big=True),
        Case("huge/json_ea_50000_items", (EA,), lambda: json.dumps({"items": [
            {"floodAreaID": f"A{i}", "description": "d", "severityLevel": 3,
             "floodArea": {"county": "Essex"}} for i in range(50_000)]}).encode(),
             {"content-type": "application/json"}, "huge", big=True),
        Case("huge/json_mastodon_deep_array", (MASTO,), lambda: b"[" * 200_000 + b"]" * 200_000,
             {"content-type": "application/json"}, "huge"),
        Case("huge/json_bluesky_deep_object", (BSKY,),
             lambda: b'{"feed":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
             {"content-type": "application/json"}, "huge"),
        Case("huge/json_mastodon_10000_statuses", (MASTO,), lambda: json.dumps([
            {"id": str(10**6 + i), "content": "<p>x</p>", "created_at": "2026-02-10T12:00:00Z",
             "url": f"https://mastodon.example/@EssexFire/{i}", "account": {"id": "1"}}
            for i in range(10_000)]).encode(), {"content-type": "application/json"}, "huge"),
    ]


# ---------------------------------------------------------------------------- bad encodings


def _rss_text(title: str, decl: str = "UTF-8") -> str:
    return (f'<?xml version="1.0" encoding="{decl}"?><rss version="2.0"><channel><title>t'
            f"</title><item><title>{title}</title><guid>enc-1</guid><description>{title}"
            "</description></item></channel></rss>")


def encoding_cases() -> list[Case]:
    text = "Café flood warning – £5 € ñ 水"
    utf8_ct = {"content-type": "application/rss+xml; charset=utf-8"}
    return [
        Case("encoding/latin1_bytes_declared_utf8", FEEDS,
             lambda: _rss_text("Caf\u00e9 na\u00efve").encode("latin-1"), utf8_ct, "encoding"),
        Case("encoding/utf16le_bom_declared_utf8", FEEDS,
             lambda: b"\xff\xfe" + _rss_text(text).encode("utf-16-le"), utf8_ct, "encoding"),
        Case("encoding/utf16be_no_bom_declared_utf8", FEEDS,
             lambda: _rss_text(text).encode("utf-16-be"), utf8_ct, "encoding"),
        Case("encoding/utf32_declared_utf8", FEEDS, lambda: _rss_text(text).encode("utf-32"),
             utf8_ct, "encoding"),
        Case("encoding/invalid_utf8_sequences", FEEDS, lambda: _rss_text("X").encode().replace(
            b"<title>X", b"<title>\xc3\x28 \xc0\xaf \xed\xa0\x80 \xf8\x88\x80\x80\x80 \xff"),
             utf8_ct, "encoding"),
        Case("encoding/header_utf16_body_utf8", FEEDS, lambda: _rss_text(text).encode(),
             {"content-type": "application/rss+xml; charset=utf-16"}, "encoding"),
        Case("encoding/declared_bogus_charset", FEEDS,
             lambda: _rss_text(text, "x-no-such-charset").encode(), utf8_ct, "encoding"),
        Case("encoding/declared_latin1_body_utf8", FEEDS,
             lambda: _rss_text(text, "ISO-8859-1").encode(), utf8_ct, "encoding"),
        Case("encoding/declared_ebcdic_body_ascii", FEEDS,
             lambda: _rss_text("plain", "cp037").encode(), utf8_ct, "encoding"),
        Case("encoding/utf8_bom_then_utf16_declaration", FEEDS,
             lambda: b"\xef\xbb\xbf" + _rss_text(text, "UTF-16").encode(), utf8_ct, "encoding"),
        Case("encoding/nul_separated_ascii", FEEDS, lambda: b"\x00".join(
            bytes([c]) for c in _rss_text("x").encode()), utf8_ct, "encoding"),
        Case("encoding/cap_latin1_declared_utf8", (CAP,), lambda: fixture("cap_alert.xml")
             .replace(b"<headline>", b"<headline>Caf\xe9 "), {"content-type":
                                                              "application/cap+xml"},
             "encoding"),
        Case("encoding/cap_utf16", (CAP,), lambda: b"\xff\xfe" + fixture("cap_alert.xml")
             .decode().encode("utf-16-le"), {"content-type": "application/cap+xml"},
             "encoding"),
        Case("encoding/json_ea_latin1", (EA,), lambda: fixture("ea_floods_essex.json").decode()
             .replace("Chelmsford", "Chelmsf\u00f6rd").encode("latin-1"),
             {"content-type": "application/json; charset=utf-8"}, "encoding"),
        Case("encoding/json_ea_utf16_bom", (EA,), lambda: b"\xff\xfe" + fixture(
            "ea_floods_essex.json").decode().encode("utf-16-le"),
             {"content-type": "application/json"}, "encoding"),
        Case("encoding/json_mastodon_invalid_utf8", (MASTO,), lambda: fixture(
            "mastodon_statuses.json").replace(b"<p>", b"<p>\xff\xfe\xc3", 1),
             {"content-type": "application/json"}, "encoding"),
        Case("encoding/json_bluesky_lone_surrogate_escape", (BSKY,), lambda: fixture(
            "bluesky_feed.json").replace(b'"text": "', b'"text": "\\ud800\\udfff\\ud800 ', 1),
             {"content-type": "application/json"}, "encoding"),
        Case("encoding/json_bluesky_utf32", (BSKY,), lambda: fixture("bluesky_feed.json")
             .decode().encode("utf-32"), {"content-type": "application/json"}, "encoding"),
    ]


# --------------------------------------------------------------------- HTML and crossed types

CAPTIVE = (b"<!DOCTYPE html><html><head><title>Wi-Fi login</title></head><body>"
           b"<form action='/login'><input name=user></form></body></html>")
CHALLENGE = (b"<!DOCTYPE html><html><head><title>Just a moment...</title><script>"
             b"window._cf_chl_opt={};</script></head><body>Checking your browser</body></html>")
NOT_FOUND = b"<html><body><h1>404 Not Found</h1><p>nginx</p></body></html>"
ALT_LINK = (b"<html><head><link rel='alternate' type='application/rss+xml' "
            b"href='https://example.gov.uk/feed'></head><body><item><title>x</title></item>"
            b"</body></html>")
XHTML = (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>t'
         b"</title></head><body><p>page</p></body></html>")
MAINTENANCE = (b"<html><body><h1>Service unavailable</h1>We are down for maintenance "
               b"<rss version='2.0'><channel><item><title>sneaky</title></item></channel></rss>"
               b"</body></html>")


def html_cases() -> list[Case]:
    html = {"content-type": "text/html; charset=utf-8"}
    out = []
    for name, body in (("captive_portal", CAPTIVE), ("bot_challenge", CHALLENGE),
                       ("404_page_served_200", NOT_FOUND), ("alternate_link_page", ALT_LINK),
                       ("xhtml_page", XHTML), ("maintenance_with_embedded_rss", MAINTENANCE)):
        out.append(Case(f"html/{name}", ALL, _const(body), html, "html"))
    out.append(Case("html/labelled_as_rss", ALL, _const(CAPTIVE),
                    {"content-type": "application/rss+xml"}, "html"))
    out.append(Case("html/labelled_as_json", JSON_APIS, _const(NOT_FOUND),
                    {"content-type": "application/json"}, "html"))
    return out


SOAP_FAULT = (b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/'
              b'soap/envelope/"><soap:Body><soap:Fault><faultstring>x</faultstring>'
              b"</soap:Fault></soap:Body></soap:Envelope>")


def crossed_cases() -> list[Case]:
    js = {"content-type": "application/json"}
    xml = {"content-type": "application/xml"}
    out = [
        # JSON where XML was expected
        Case("crossed/ea_json_to_feeds", FEEDS, lambda: fixture("ea_floods_essex.json"), js,
             "crossed"),
        Case("crossed/mastodon_json_to_feeds", FEEDS,
             lambda: fixture("mastodon_statuses.json"), xml, "crossed"),
        Case("crossed/bluesky_json_to_feeds", FEEDS, lambda: fixture("bluesky_feed.json"),
             {"content-type": "application/rss+xml"}, "crossed"),
        Case("crossed/json_null", ALL, _const(b"null"), js, "crossed"),
        Case("crossed/json_with_xml_in_string", FEEDS,
             _const(b'"<rss version=\\"2.0\\"><channel></channel></rss>"'), js, "crossed"),
        Case("crossed/json_lines", ALL, _const(b'{"a":1}\n{"b":2}\n'), js, "crossed"),
        # XML where JSON was expected (EA floods, Mastodon, Bluesky)
        Case("crossed/soap_fault_to_json_apis", JSON_APIS, _const(SOAP_FAULT), js, "crossed"),
    ]
    for fx in ("rss20.xml", "atom.xml", "rss10.xml", "cap_alert.xml", "metoffice.xml"):
        for kind in JSON_APIS:
            out.append(Case(f"crossed/{fx.replace('.', '_')}_to_{kind.value}", (kind,),
                            (lambda fx=fx: fixture(fx)), js if kind is EA else xml,
                            "crossed"))
    # One JSON API's answer served to another (right format, wrong shape)
    out += [
        Case("crossed/ea_json_to_mastodon", (MASTO,), lambda: fixture("ea_floods_essex.json"),
             js, "crossed"),
        Case("crossed/mastodon_json_to_bluesky", (BSKY,),
             lambda: fixture("mastodon_statuses.json"), js, "crossed"),
        Case("crossed/bluesky_json_to_ea", (EA,), lambda: fixture("bluesky_feed.json"), js,
             "crossed"),
    ]
    return out


# ---------------------------------------------------------------------- absurd CAP documents


def cap_doc(**replace: str) -> Callable[[], bytes]:
    """cap_alert.xml with elements replaced (``None``-like "" removes the element)."""

    def make() -> bytes:
        text = fixture("cap_alert.xml").decode()
        for tag, value in replace.items():
            pattern = re.compile(rf"<{tag}>.*?</{tag}>", re.S)
            new = "" if value == "<drop>" else f"<{tag}>{value}</{tag}>"
            text, n = pattern.subn(lambda _m, new=new: new, text, count=1)
            assert n, tag
        return text.encode()

    return make


def cap_with(fn: Callable[[str], str]) -> Callable[[], bytes]:
    return lambda: fn(fixture("cap_alert.xml").decode()).encode()


def _many_areas(text: str, n: int = 10_000) -> str:
    areas = "".join(f"<area><areaDesc>Area {i}</areaDesc></area>" for i in range(n))
    return text.replace("</info>", areas + "</info>", 1)


def _many_infos(text: str) -> str:
    start, end = text.index("<info>"), text.index("</info>") + len("</info>")
    info = text[start:end]
    extra = "".join(info.replace("<info>", f"<info><language>x-{i}</language>", 1)
                    for i in range(200))
    return text[:start] + extra + text[end:]


def _refs(value: str) -> Callable[[str], str]:
    return lambda t: t.replace("</scope>", f"</scope><references>{value}</references>", 1)


def cap_cases() -> list[Case]:
    cap = {"content-type": "application/cap+xml"}
    specs: list[tuple[str, Callable[[], bytes]]] = [
        ("no_identifier", cap_doc(identifier="<drop>")),
        ("empty_identifier", cap_doc(identifier="   ")),
        ("status_bogus", cap_doc(status="Bogus")),
        ("status_exercise", cap_doc(status="Exercise")),
        ("scope_restricted", cap_doc(scope="Restricted")),
        ("severity_apocalyptic", cap_doc(severity="Apocalyptic")),
        ("urgency_and_certainty_nonsense", cap_doc(urgency="Yesterday", certainty="Vibes")),
        ("msgtype_garbage", cap_doc(msgType="Shout")),
        ("sent_year_99999", cap_doc(sent="99999-01-01T00:00:00+00:00")),
        ("sent_not_a_date", cap_doc(sent="the day after tomorrow")),
        ("sent_naive", cap_doc(sent="2026-02-10T12:00:00")),
        ("sent_year_0000", cap_doc(sent="0000-00-00T00:00:00-00:00")),
        ("expires_year_99999", cap_doc(expires="99999-12-31T23:59:59+14:00")),
        ("ten_thousand_areas", cap_with(_many_areas)),
        ("two_hundred_infos", cap_with(_many_infos)),
        ("references_malformed", cap_with(_refs(",,,;;; &lt;&gt;&amp; no-commas-here ,"))),
        ("references_100k", cap_with(_refs(" ".join(f"s,id{i},2026-01-01T00:00:00Z"
                                                    for i in range(100_000))))),
        ("references_self", cap_with(_refs("floodline@environment-agency.gov.uk,"
                                           "GB-EA-2026-0001,2026-02-10T10:00:00+00:00"))),
        ("no_info", cap_with(lambda t: re.sub(r"<info>.*</info>", "", t, flags=re.S))),
        ("info_without_area", cap_with(lambda t: re.sub(r"<area>.*?</area>", "", t,
                                                       flags=re.S))),
        ("identifier_100kb", cap_doc(identifier="I" * 100_000)),
        ("headline_script", cap_doc(headline="<![CDATA[<script>alert(1)</script>]]>")),
        ("wrong_namespace", cap_with(lambda t: t.replace("urn:oasis:names:tc:emergency:cap:1.2",
                                                         "urn:example:not-cap"))),
        ("cap_1_1_namespace", cap_with(lambda t: t.replace("cap:1.2", "cap:1.1"))),
        ("with_internal_dtd", cap_with(lambda t: t.replace(
            "<alert", '<!DOCTYPE alert [<!ENTITY x "boom">]><alert', 1).replace(
            "<headline>", "<headline>&x;", 1))),
        ("xxe_in_cap", cap_with(lambda t: t.replace(
            "<alert", '<!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert', 1)
            .replace("<headline>", "<headline>&x;", 1))),
        ("alert_inside_alert", cap_with(lambda t: t.replace("<info>", t[t.index("<alert"):]
                                                            .split("<info>")[0] + "<info>", 1))),
        ("unclosed_alert", cap_with(lambda t: t[: t.rindex("</alert>")])),
        ("json_alert", lambda: json.dumps({"alert": {"identifier": "x",
                                                     "status": "Actual"}}).encode()),
    ]
    return [Case(f"cap/{name}", (CAP,), make, cap, "cap") for name, make in specs]


def generated_cases() -> list[Case]:
    return [*bomb_cases(), *huge_cases(), *encoding_cases(), *html_cases(), *crossed_cases(),
            *cap_cases()]


def all_feed_cases() -> list[Case]:
    return [*truncated_cases(), *generated_cases()]
