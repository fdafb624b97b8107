"""Property tests of the target builder (docs/contract.md §5): whatever path it accepts, every URL
parser sees the service's own origin, and no decoding turns the path into one outside the base path.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from urllib.parse import unquote, urlsplit

import pytest
import urllib3.util
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.urls import uri_to_iri

from invoke_middleware.errors import InvalidPathError
from invoke_middleware.target import build_target_url

BASE = "http://svc.internal:8080/base"

# What an attacker would combine inside one segment: dots and their escapes (once, twice,
# and with every hex digit escaped), separators and their escapes, authority and scheme
# characters, whitespace, lookalikes, and ordinary text.
ATOMS = st.sampled_from(
    [
        ".",
        "..",
        "%2e",
        "%2E",
        "%252e",
        "%25%32%65",
        "%2f",
        "%2F",
        "%252f",
        "%25%32%66",
        "%5c",
        "%00",
        "%25",
        "%",
        "%2",
        "%zz",
        "\\",
        "@",
        ":",
        "?",
        "#",
        ";",
        "http:",
        "evil.example",
        " ",
        "\t",
        "\r\n",
        "\x00",
        "\u2215",
        "\uff0f",
        "\uff0e",
        "a",
        "b1",
        "~",
        "-",
        "%41",
        "%e2%80%ae",
        "&",
        "=",
        "%3f",
        "%23",
        "%3b",
        "%20",
        "%09",
        "%0a",
        "%7f",
        "%c2%a0",
        "%c0%ae",
        "%e0%80%ae",
        "%ef%bc%8e",
        "%e2%80%a4",
        "%e2%80%a5",
        "%c0%af",
        "%e0%80%af",
        "%c1%9c",
        "%c0%a5",
        "%c0%80",
        "%c0%8d%c0%8a",
        "%ef%bc%8f",
        "%ef%bc%bc",
        "%e2%84%85",
        "%c0",
        "%ad",
        "%85",
        "%c2%ad",
        "%e2%80%8b",
        "%ef%bb%bf",
        "%e1%a0%8e",
    ]
)
SEGMENTS = st.lists(ATOMS, min_size=0, max_size=3).map("".join)
PATHS = st.builds(
    lambda lead, segments: lead + "/".join(segments),
    st.sampled_from(["/", "//", "", "/./", "\\"]),
    st.lists(SEGMENTS, min_size=1, max_size=6),
)


# Overlong UTF-8 spellings that a lenient decoder accepts, and what it reads ("%" as the
# escape it is, decoded in the same round).
OVERLONG = {
    "%c0%ae": ".",
    "%e0%80%ae": ".",
    "%f0%80%80%ae": ".",
    "%c0%af": "/",
    "%e0%80%af": "/",
    "%c1%9c": "\\",
    "%c0%a5": "%25",
    "%c0%80": "\x00",
    "%c0%8d": "\r",
    "%c0%8a": "\n",
}


def decoded_forms(path: str) -> list[str]:
    """``path`` as servers would see it that decode once, twice or three times, accept overlong
    UTF-8, replace or drop malformed bytes, fold Unicode with NFKC, and trim and cut each
    segment at ``?``, ``#`` or ``;``, format characters (U+00AD, U+200B, U+FEFF) left out."""
    forms = [path]
    for errors in ("replace", "ignore"):
        form = path
        for _ in range(3):
            lenient = form
            for overlong, character in OVERLONG.items():
                pattern = re.compile(re.escape(overlong), re.IGNORECASE)
                lenient = pattern.sub(lambda _, read=character: read, lenient)
            forms.append(unquote(form, errors=errors))
            form = unquote(lenient, errors=errors)
            forms.append(form)
    forms += [unicodedata.normalize("NFKC", form) for form in forms]
    return forms + ["/".join(cut_segment(s) for s in form.split("/")) for form in forms]


def cut_segment(segment: str) -> str:
    visible = "".join(c for c in segment if unicodedata.category(c) != "Cf")
    return re.split(r"[?#;]", visible.strip(), maxsplit=1)[0].strip()


@settings(max_examples=3000, deadline=None)
@given(PATHS)
def test_an_accepted_path_never_leaves_the_origin_or_the_base_path(path: str) -> None:
    try:
        url = build_target_url(BASE, path)
    except InvalidPathError:
        return
    for parsed_host, parsed_port, parsed_scheme in (
        (urlsplit(url).hostname, urlsplit(url).port, urlsplit(url).scheme),
        (
            urllib3.util.parse_url(url).host,
            urllib3.util.parse_url(url).port,
            urllib3.util.parse_url(url).scheme,
        ),
        (urlsplit(uri_to_iri(url)).hostname, urlsplit(uri_to_iri(url)).port, "http"),
    ):
        assert (parsed_scheme, parsed_host, parsed_port) == ("http", "svc.internal", 8080)
    assert url.isascii()
    assert not any(c in url for c in " \t\r\n\x00#\\")
    target = url[len("http://svc.internal:8080") :].partition("?")[0]
    for form in decoded_forms(target):
        # RFC 3986 §5.2.4 dot-segment removal, as a server resolving the path would do.
        resolved = posixpath.normpath(form.replace("\\", "/"))
        assert resolved == "/base" or resolved.startswith("/base/"), (path, form, resolved)
    for form in decoded_forms(target):
        assert not any(c < " " or c == "\x7f" for c in form), (path, form)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/a/b?x=1", id="query"),
        pytest.param("/%41%42", id="escaped-letters"),
        pytest.param("/a//b", id="inner-double-slash"),
        pytest.param("/a.b/c..d", id="dots-inside-names"),
        pytest.param("/caf%C3%A9/%E2%80%A4x", id="encoded-utf-8-and-a-dot-leader-in-a-name"),
        pytest.param("/a%20b/..x%3f", id="encoded-space-and-dots-inside-names"),
        pytest.param("/x?a=%0d%0a", id="encoded-control-in-the-query"),
    ],
)
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert build_target_url(BASE, path).startswith("http://svc.internal:8080/base/")
