"""The cookie rules (docs/contract.md §6), one ``Set-Cookie`` value at a time: whatever a
container writes, the cookie a browser keeps covers no path outside its service's and no
other host, or the field is dropped."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoke_middleware.cookies import (
    MAX_ATTRIBUTES,
    MAX_PATH_LENGTH,
    TEAM_MARKER,
    scope_cookies,
    scope_set_cookie,
    team_cookies,
    team_tag,
)

ROOT = "/r/containers/echo"
TEAM = uuid.UUID("019abc12-4567-7890-abcd-ef1234567891")
OTHER = uuid.UUID("019abc12-4567-7890-abcd-000000000002")
OURS = f"{TEAM_MARKER}{team_tag(TEAM)}-"
THEIRS = f"{TEAM_MARKER}{team_tag(OTHER)}-"


@pytest.mark.parametrize(
    ("value", "request_path", "expected"),
    [
        ("a=1", "/", "a=1; Path=/r/containers/echo/"),
        ("a=1", "/x/y/z?q=/w", "a=1; Path=/r/containers/echo/x/y"),
        ("a=1; Path=/", "/x/y", "a=1; Path=/r/containers/echo/"),
        ("a=1; PATH = /p ; secure", "/", "a=1; Path=/r/containers/echo/p; secure"),
        # The last Path counts; one that is not absolute stands for the default.
        ("a=1; Path=/one; Path=/two", "/", "a=1; Path=/r/containers/echo/two"),
        ("a=1; Path=/one; Path=two", "/d/e", "a=1; Path=/r/containers/echo/d"),
        ("a=1; Path=", "/", "a=1; Path=/r/containers/echo/"),
        # A default path is cut at a ";", which would end the attribute.
        ("a=1", "/d;e/f", "a=1; Path=/r/containers/echo/"),
        ("a=1", "/d/e;f/g", "a=1; Path=/r/containers/echo/d"),
        # Already below the service's own path: kept; a look-alike is not below it.
        ("a=1; Path=/r/containers/echo", "/", "a=1; Path=/r/containers/echo"),
        ("a=1; Path=/r/containers/echo/p", "/", "a=1; Path=/r/containers/echo/p"),
        ("a=1; Path=/r/containers/echoes", "/", "a=1; Path=/r/containers/echo/r/containers/echoes"),
        ("a=1; Domain=.example.com; DOMAIN=x", "/", "a=1; Path=/r/containers/echo/"),
        # Unknown attributes, and a value holding "=" and "Path" text, pass as written.
        ("a=b=Path=/; Foo=Path=/", "/", "a=b=Path=/; Path=/r/containers/echo/; Foo=Path=/"),
        ("nameless", "/", "nameless; Path=/r/containers/echo/"),
        ("__Secure-a=1; Secure", "/", "__Secure-a=1; Path=/r/containers/echo/; Secure"),
        # The Path comes first: a browser reading only so many attributes still sees it.
        ("a=1" + "; x" * 20 + "; Path=/ui", "/", "a=1; Path=/r/containers/echo/ui" + "; x" * 20),
    ],
)
def test_scope_set_cookie(value: str, request_path: str, expected: str) -> None:
    assert scope_set_cookie(value, ROOT, request_path) == expected


@pytest.mark.parametrize(
    "value", ["__Host-a=1; Path=/", "__HOST-a=1", " __host-a=1", "__Host-a", "=__Host-a=1"]
)
def test_host_prefixed_cookies_are_dropped(value: str) -> None:
    assert scope_set_cookie(value, ROOT, "/") is None


def test_a_path_too_long_for_a_browser_falls_back_to_the_service_root() -> None:
    long = "/" + "p" * MAX_PATH_LENGTH
    assert scope_set_cookie(f"a=1; Path={long}", ROOT, "/") == f"a=1; Path={ROOT}/"


@pytest.mark.parametrize("filler", ["", " x", "Path=/"])
def test_attributes_past_the_cap_are_dropped_unread(filler: str) -> None:
    # A loop turn per attribute: 60,000 of them in a 64 KB line cost 5 ms, and a head of
    # such lines 20 ms. Whatever comes past the cap, a Domain included, is not relayed.
    value = "a=1" + f";{filler}" * 60_000 + "; Domain=evil.example; Path=/"
    scoped = scope_set_cookie(value, ROOT, "/")
    assert scoped is not None
    assert scoped.startswith(f"a=1; Path={ROOT}/")
    assert "Domain" not in scoped
    assert scoped.count(";") <= MAX_ATTRIBUTES + 1


@pytest.mark.parametrize("root", ["", "/api;v=1/r/containers/echo"])
def test_without_a_root_to_write_the_browser_default_applies(root: str) -> None:
    # Unknown, or ending the attribute at its ";" (Path=/api would cover the host's /api):
    # no Path, so the browser takes the directory of the URL it asked for, below the root.
    value = "a=1; Path=/; Domain=example.com; Secure"
    assert scope_set_cookie(value, root, "/x/y") == "a=1; Secure"


def test_scope_cookies_touches_set_cookie_fields_only() -> None:
    fields = [
        ("Content-Type", "text/plain"),
        ("set-cookie", "a=1"),
        ("Set-Cookie", "__Host-b=2"),
        ("Clear-Site-Data", '"cookies"'),
    ]
    assert scope_cookies(fields, ROOT, "/") == [
        ("Content-Type", "text/plain"),
        ("set-cookie", f"a=1; Path={ROOT}/"),
    ]
    unchanged = [("Content-Type", "text/plain")]
    assert scope_cookies(unchanged, ROOT, "/") is unchanged


def attributes(value: str) -> list[tuple[str, str]]:
    """A browser's reading of a Set-Cookie's attributes (RFC 6265 §5.2), names lower-cased."""
    parsed = []
    for attribute in value.split(";")[1:]:
        name, _, text = attribute.partition("=")
        parsed.append((name.strip(" \t").lower(), text.strip(" \t")))
    return parsed


TEXT = st.text(alphabet=st.sampled_from("aP/=; \t.Dd_-HhOoSsTtMmAaIiNn"), max_size=40)
PIECES = st.sampled_from(["Path=", "path =", "Domain=", "__Host-", "/", ";", "=", " ", "..", "\t"])
VALUES = st.lists(st.one_of(TEXT, PIECES), max_size=12).map("".join)
REQUEST_PATHS = st.lists(st.sampled_from(["/", "a", "..", "%2F", "?", "/b"]), max_size=8).map(
    lambda parts: "/" + "".join(parts)
)


@given(value=VALUES, request_path=REQUEST_PATHS)
def test_no_cookie_escapes_its_service(value: str, request_path: str) -> None:
    scoped = scope_set_cookie(value, ROOT, request_path)
    pair = value.partition(";")[0]
    if scoped is None:
        name, _, text = pair.partition("=")
        assert (name.strip(" \t") or text).strip(" \t").lower().startswith("__host-")
        return
    assert scoped.partition(";")[0] == pair  # the name and value as written
    read = attributes(scoped)
    assert all(name != "domain" for name, _ in read)
    paths = [text for name, text in read if name == "path"]
    assert paths, scoped
    assert paths[-1] == ROOT or paths[-1].startswith(ROOT + "/")


def for_team(*values: str) -> list[str]:
    """The ``Set-Cookie`` values a browser gets for ``values`` from a service of TEAM."""
    fields = [("Set-Cookie", value) for value in values]
    return [value for _, value in scope_cookies(fields, ROOT, "/", TEAM)]


def test_team_tags_differ_and_are_cookie_name_characters() -> None:
    assert team_tag(TEAM) != team_tag(OTHER)
    assert len(team_tag(TEAM)) == 16
    assert int(team_tag(TEAM), 16) >= 0
    assert team_tag(TEAM) == team_tag(uuid.UUID(str(TEAM)))


def removal(name: str, attributes: str = f"; Path={ROOT}/") -> str:
    """The field with which the gateway removes ``name``: no value, and no lifetime but 0."""
    return f"{name}=; Max-Age=0{attributes}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # A cookie no script reads carries its team in its name; the plain spelling goes.
        (
            "sid=1; HttpOnly",
            [f"{OURS}sid=1; Path={ROOT}/; HttpOnly", removal("sid", f"; Path={ROOT}/; HttpOnly")],
        ),
        (
            "sid=1; httponly ; Secure",
            [
                f"{OURS}sid=1; Path={ROOT}/; httponly ; Secure",
                removal("sid", f"; Path={ROOT}/; httponly ; Secure"),
            ],
        ),
        # One a script reads keeps its name; the marked spelling goes.
        ("XSRF-TOKEN=abc", [f"XSRF-TOKEN=abc; Path={ROOT}/", removal(f"{OURS}XSRF-TOKEN")]),
        # The mark goes after a prefix a browser reads only at the start of the name.
        (
            "__Secure-sid=1; Secure; HttpOnly",
            [
                f"__Secure-{OURS}sid=1; Path={ROOT}/; Secure; HttpOnly",
                removal("__Secure-sid", f"; Path={ROOT}/; Secure; HttpOnly"),
            ],
        ),
        (
            "__http-sid=1; HttpOnly",
            [
                f"__http-{OURS}sid=1; Path={ROOT}/; HttpOnly",
                removal("__http-sid", f"; Path={ROOT}/; HttpOnly"),
            ],
        ),
        # A nameless cookie comes back as its value alone: "=sid=x" would reach a service
        # as sid, "=__team-…-sid" as a marked cookie. It is never relayed.
        ("token; HttpOnly", []),
        (f"={OURS}sid=planted", []),
        ("  =sid=planted; HttpOnly", []),
        # No container writes a marked name: another team's, its own, or a look-alike.
        (f"{THEIRS}sid=evil", []),
        (f"{OURS}sid=evil; HttpOnly", []),
        (f"__Secure-{THEIRS.upper()}sid=evil; Secure", []),
    ],
)
def test_cookies_no_script_reads_are_kept_to_the_team(value: str, expected: list[str]) -> None:
    assert for_team(value) == expected


def test_with_pages_sandboxed_every_cookie_is_kept_to_the_team() -> None:
    fields = [("Set-Cookie", "XSRF-TOKEN=abc")]
    scoped = scope_cookies(fields, ROOT, "/", TEAM, mark_every_cookie=True)
    assert [value for _, value in scoped] == [
        f"{OURS}XSRF-TOKEN=abc; Path={ROOT}/",
        removal("XSRF-TOKEN"),
    ]


@pytest.mark.parametrize(
    "removed",
    [
        "sid=gone; Max-Age=0",
        "sid=; Max-Age=-1; HttpOnly",
        "sid=; max-age=000",
        "sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "sid=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; HttpOnly",
        # A Max-Age that is not a number is ignored: the Expires decides.
        "sid=; Max-Age=soon; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    ],
)
def test_a_removal_removes_both_spellings_without_a_value(removed: str) -> None:
    # A logout written without HttpOnly still ends a session cookie set with it; and a
    # browser that reads the date otherwise keeps no value of it either.
    plain, marked = for_team(removed)
    assert plain.startswith("sid=; Max-Age=0; Path=")
    assert marked.startswith(f"{OURS}sid=; Max-Age=0; Path=")
    assert "Expires" not in plain + marked
    assert plain.partition(";")[2] == marked.partition(";")[2]


@pytest.mark.parametrize(
    "kept",
    [
        "sid=1; Max-Age=60; HttpOnly",
        "sid=1; Max-Age=0x0; HttpOnly",  # not a number: ignored, the cookie lasts
        "sid=1; Expires=Wed, 09 Jun 2099 10:18:14 GMT; HttpOnly",
        "sid=1; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly",  # Max-Age wins
        "sid=1; Expires=never; HttpOnly",
    ],
)
def test_a_cookie_that_lasts_is_set_marked(kept: str) -> None:
    marked, plain = for_team(kept)
    assert marked == f"{OURS}{scope_set_cookie(kept, ROOT, '/')}"
    assert plain.startswith("sid=; Max-Age=0; Path=")
    assert "Expires" not in plain


def test_the_attribute_past_the_path_is_read_too() -> None:
    # scope_set_cookie keeps MAX_ATTRIBUTES of the container's and adds Path before them.
    value = "sid=1" + "; x" * (MAX_ATTRIBUTES - 1) + "; HttpOnly"
    assert for_team(value)[0].startswith(f"{OURS}sid=1;")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        # No marked cookie: the field as it is (the same object).
        ("a=1; b=2", "a=1; b=2"),
        (f"{OURS}sid=1; theme=dark", "sid=1; theme=dark"),
        (f"{THEIRS}sid=2; theme=dark", "theme=dark"),
        (f"{THEIRS}sid=2; {OURS}sid=1", "sid=1"),
        (f"{THEIRS}sid=2", None),
        # An unmarked cookie of the name of one of the team's own gives way to it.
        (f"sid=script; {OURS}sid=1; other=1", "sid=1; other=1"),
        (f"__Secure-{OURS}sid=1;__Secure-{THEIRS}sid=2", "__Secure-sid=1"),
        (f"{OURS}=token; x", "token; x"),
        (f"{OURS}sid=a=b;;  ; {THEIRS}", "sid=a=b"),
        # A mark out of place (fields a server joined with ",", a value holding one) is
        # whose nobody can tell: it goes.
        (f"theme=dark,{THEIRS}sid=2; {OURS}sid=1", "sid=1"),
        (f"x=a{OURS}", None),
    ],
)
def test_a_service_gets_its_own_teams_cookies_only(sent: str, expected: str | None) -> None:
    assert team_cookies(sent, TEAM) == expected


def test_a_field_without_a_marked_cookie_is_not_rebuilt() -> None:
    sent = "a=1;b=2 ;  c"
    assert team_cookies(sent, TEAM) is sent


NAMES = st.text(alphabet=st.sampled_from("ab_-"), min_size=1, max_size=6)


@given(
    cookies=st.lists(
        st.tuples(st.sampled_from(["", OURS, THEIRS, "__Secure-" + THEIRS]), NAMES), max_size=8
    )
)
def test_no_cookie_of_another_team_reaches_a_service(cookies: list[tuple[str, str]]) -> None:
    sent = "; ".join(f"{mark}{name}=v" for mark, name in cookies)
    passed = team_cookies(sent, TEAM) or ""
    assert TEAM_MARKER not in passed
    ours = {name for mark, name in cookies if mark == OURS}
    got = [pair.partition("=")[0] for pair in passed.split("; ") if pair]
    assert sorted(got) == sorted(
        name for mark, name in cookies if mark == OURS or (mark == "" and name not in ours)
    )


@given(expires=st.text(max_size=80), max_age=st.text(max_size=8))
def test_any_expiry_text_is_read_without_failing(expires: str, max_age: str) -> None:
    value = f"sid=1; HttpOnly; Max-Age={max_age}; Expires={expires}".replace("\r", "")
    assert 1 <= len(for_team(value)) <= 2
