"""A container's cookies, kept to its own service (docs/contract.md §6).

Every service answers on the gateway's origin, each below a path of its own
(``/r/containers/{slug}/``). A browser sends a cookie to every path its ``Path`` attribute
covers, so a container that sets ``sid=…; Path=/`` (or sets a cookie without ``Path`` from a
short URL) would have it sent to every other team's service and to the host application, and
could overwrite theirs. The catch-all therefore rewrites each ``Set-Cookie`` field it relays,
as a path-mounting reverse proxy does (nginx's ``proxy_cookie_path``), but for every path:

- ``Path`` becomes the container's path re-rooted below its service's public path, the
  *root*: ``Path=/`` from ``echo`` becomes ``Path=/r/containers/echo/``, ``Path=/api`` becomes
  ``Path=/r/containers/echo/api``. A path already at or below the root (a container that knows
  where it is mounted) is kept. Without a usable ``Path`` the browser's default (RFC 6265
  §5.1.4) is computed from the path the container was asked for, then re-rooted the same way.
  The new ``Path`` comes right after the name and value, where no browser's limit on the
  number of attributes can skip it;
- ``Domain`` is dropped, so a cookie never reaches another host of the domain;
- a ``__Host-`` cookie, which a browser accepts only with ``Path=/``, is dropped whole.

When the root is not known as the caller's URL spells it, or holds a ``;`` (which would end
the attribute), no ``Path`` is written: the browser's default, the directory of the URL it
asked for, is below the root already. Everything else (name, value, ``Expires``,
``Max-Age``, ``Secure``, ``HttpOnly``, ``SameSite``, unknown attributes) is relayed as the
container wrote it. ``Clear-Site-Data``, with which a container would clear every cookie of
the origin (the host's session and every other service's), is dropped too.

A path is not enough where two teams each have a service of the same slug: both answer at
``/r/containers/{slug}/``, told apart by the caller's credential, and a browser that belongs
to both teams sends one team's cookies to the other's container. So a cookie the script of a
page cannot read (``HttpOnly``), a session's, is kept to its team by name: the gateway hands it
to the browser as ``__team-<tag>-<name>`` (the tag 16 hex digits of a hash of the team's id;
after a ``__Secure-`` or ``__Http-`` prefix, which a browser only honours at the start) and,
on the way up, passes such a cookie to a service of that team only, under its own name again;
an unmarked cookie of the same name (one a script wrote) gives way to it, and so does any
cookie that holds a mark elsewhere than at the start of its name. A cookie a script can read
keeps its name, as scripts rely on it (it is the shared origin's anyway: any page's script
reads it), unless pages run sandboxed (``sandbox_pages``), whose scripts read no cookie: then
every cookie is marked.

A cookie has one name for the container and two spellings in the browser: each
``Set-Cookie`` that sets one spelling also removes the other, and one that removes a cookie
removes both (without its value), so that a logout or a new value written without
``HttpOnly`` still ends the session the container set with it. A nameless cookie (the browser
sends back its value alone, ``=sid=x`` as ``sid=x``) can be neither marked nor removed and is
dropped, and so is one whose name starts like a marked one: no container writes another
team's.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from email.utils import mktime_tz, parsedate_tz

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_PATH_LENGTH",
    "TEAM_MARKER",
    "scope_cookies",
    "scope_set_cookie",
    "team_cookies",
    "team_tag",
]

#: The longest ``Path`` a browser takes (RFC 6265bis §5.6); past it, the root is used.
MAX_PATH_LENGTH = 1024

#: The attributes of a cookie relayed, at most (Chromium reads 16; RFC 6265bis sets no
#: number): the rest are dropped unread, so that a field of 60,000 ``;`` costs what one of
#: 32 does, not a loop turn each. A ``Domain`` or ``Path`` among them goes too.
MAX_ATTRIBUTES = 32

#: What a cookie kept to its team starts with (after a ``__Secure-`` or ``__Http-`` prefix).
TEAM_MARKER = "__team-"

# The name prefixes a browser gives a meaning to only at the very start of a name: the team's
# mark goes after them. (``__Host-`` cookies never get this far.)
_BROWSER_PREFIXES = ("__secure-", "__http-")


@functools.lru_cache(maxsize=4096)
def team_tag(team_id: uuid.UUID) -> str:
    """The 16 hex digits that mark the cookies of ``team_id``'s services.

    Not a secret: a cookie only a script could forge is no worse than any other a script of
    the shared origin writes."""
    return hashlib.blake2b(team_id.bytes, digest_size=8, person=b"invoke-cookie").hexdigest()


def scope_set_cookie(value: str, root: str, request_path: str) -> str | None:
    """``value`` (one ``Set-Cookie`` field) limited to the service whose paths start at
    ``root`` (as the caller's URL spells it, without a trailing ``/``; ``""`` when unknown),
    or ``None`` when the cookie cannot be limited and must be dropped.

    ``request_path`` is the path the container was asked for (the catch-all's tail, as the
    caller spelled it), from which a browser computes the cookie's default path.
    """
    pair, _, attributes = value.partition(";")
    name, equals, text = pair.partition("=")
    # Without "=", the pair is a value with an empty name (RFC 6265bis §5.6); browsers refuse
    # a nameless cookie whose value starts like a prefixed name, and so does the gateway.
    prefixed = name if equals and name.strip(" \t") else text if equals else pair
    if prefixed.strip(" \t")[:7].lower() == "__host-":
        return None
    kept: list[str] = []
    path: str | None = None
    if attributes:
        for attribute in attributes.split(";", MAX_ATTRIBUTES)[:MAX_ATTRIBUTES]:
            key = attribute.partition("=")[0].strip(" \t").lower()
            if key == "path":
                # The last Path attribute counts (RFC 6265 §5.3 step 7), if it is absolute.
                given = attribute.partition("=")[2].strip(" \t")
                path = given if given.startswith("/") else None
            elif key != "domain":
                kept.append(attribute)
    rest = ";" + ";".join(kept) if kept else ""
    if not root or ";" in root:
        return pair + rest
    if path is None:
        path = _default_path(request_path)
    if not _within(path, root):
        path = root + path
    if len(path) > MAX_PATH_LENGTH:
        path = root + "/"
    return f"{pair}; Path={path}{rest}"


def scope_cookies(
    headers: list[tuple[str, str]],
    root: str,
    request_path: str,
    team: uuid.UUID | None = None,
    *,
    mark_every_cookie: bool = False,
) -> list[tuple[str, str]]:
    """``headers`` with every ``Set-Cookie`` field passed through :func:`scope_set_cookie`,
    and no ``Clear-Site-Data`` (the same list when there is neither).

    With ``team`` (the caller's), an ``HttpOnly`` cookie (with ``mark_every_cookie``, every
    cookie: for pages whose scripts read no cookie) is kept to that team by name, each field
    also removes the cookie's other spelling, and a nameless cookie or one named like a marked
    one is dropped (see the module's docstring)."""
    for name, _ in headers:  # a loop, not any(): no generator on every relayed response
        if (len(name) == 10 and name.lower() == "set-cookie") or (
            len(name) == 15 and name.lower() == "clear-site-data"
        ):
            break
    else:
        return headers
    scoped: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "set-cookie":
            limited = scope_set_cookie(value, root, request_path)
            if limited is None:
                continue
            if team is None:
                scoped.append((name, limited))
            else:
                fields = _for_team(limited, team_tag(team), mark_every_cookie)
                scoped.extend((name, field) for field in fields)
        elif lowered != "clear-site-data":
            scoped.append((name, value))
    return scoped


def _default_path(request_path: str) -> str:
    """RFC 6265 §5.1.4: the directory of the request's path (``/`` at least), up to a ``;``,
    which would end the attribute."""
    path = request_path.partition("?")[0].partition(";")[0]
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rindex("/")]


def _within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (RFC 6265 §5.1.4 path-match)."""
    return path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/")


def _for_team(field: str, tag: str, every: bool) -> list[str]:
    """The ``Set-Cookie`` fields that stand for ``field`` (already scoped to its path) once
    its cookie is kept to the team of ``tag`` (``every`` cookie, or an ``HttpOnly`` one).

    A cookie has one name for the container and two spellings in the browser, the marked and
    the plain one: each field that sets one spelling also removes the other, so the browser
    never keeps both (an older session beside a newer value), and a removal removes both."""
    pair, _, attributes = field.partition(";")
    name, equals, value = pair.partition("=")
    bare = name.strip(" \t")
    if not equals or not bare:
        # A nameless cookie comes back as its value alone: "=sid=x" reaches the service as a
        # cookie named sid, "__team-…-sid" as a marked one. It can be neither marked nor
        # removed (a nameless, empty cookie is ignored), so it is not relayed at all.
        return []
    start = _prefix_length(bare)
    if bare[start : start + len(TEAM_MARKER)].lower() == TEAM_MARKER:
        return []  # the gateway's mark: no container writes one
    http_only = False
    ended: bool | None = None  # by Max-Age, which wins over Expires (RFC 6265 §5.3 step 3)
    expires = ""
    kept: list[str] = []  # the attributes of a removal: all but the cookie's lifetime
    # One more than scope_set_cookie keeps: the Path it put first.
    for attribute in attributes.split(";", MAX_ATTRIBUTES + 1)[: MAX_ATTRIBUTES + 1]:
        key, _, given = attribute.partition("=")
        key = key.strip(" \t").lower()
        if key == "max-age":
            ended = _ended_by_max_age(given.strip(" \t"), ended)
            continue
        if key == "expires":
            expires = given.strip(" \t")
            continue
        if key == "httponly":
            http_only = True
        kept.append(attribute)
    if ended is None and expires:
        ended = _passed(expires)
    marked = f"{bare[:start]}{TEAM_MARKER}{tag}-{bare[start:]}"
    removal = "; Max-Age=0" + "".join(f";{attribute}" for attribute in kept)
    if ended:
        # Both spellings removed, neither with a value: a browser that reads the date
        # otherwise keeps no value either.
        return [f"{bare}={removal}", f"{marked}={removal}"]
    if http_only or every:
        return [f"{marked}={value}{field[len(pair) :]}", f"{bare}={removal}"]
    return [field, f"{marked}={removal}"]


def _prefix_length(name: str) -> int:
    """How much of ``name`` is a prefix a browser reads at its start (``__Secure-``)."""
    lowered = name[:9].lower()
    for prefix in _BROWSER_PREFIXES:
        if lowered.startswith(prefix):
            return len(prefix)
    return 0


def _ended_by_max_age(given: str, before: bool | None) -> bool | None:
    """Whether a ``Max-Age`` of ``given`` ends the cookie at once (0 or less, RFC 6265
    §5.2.2); ``before`` (what an earlier one said) when ``given`` is not a number, which a
    browser ignores."""
    digits = given[1:] if given[:1] == "-" else given
    if not (digits.isascii() and digits.isdigit()):
        return before
    return given[0] == "-" or not digits.strip("0")


def _passed(expires: str) -> bool:
    """Whether the date of an ``Expires`` attribute has passed (``False`` when it is not a
    date, which a browser ignores). The standard library's date reader takes the forms
    browsers do (RFC 1123, and the Netscape ``01-Jan-1970`` one)."""
    try:
        parsed = parsedate_tz(expires[:64])  # a date is short: a long value costs no more
        return parsed is not None and mktime_tz(parsed) <= time.time()
    except (ValueError, OverflowError, IndexError):
        return False


def team_cookies(value: str, team: uuid.UUID) -> str | None:
    """One ``Cookie`` field as a service of ``team`` may have it: the team's own marked
    cookies under their names again, other teams' marked cookies dropped, and an unmarked
    cookie that has the name of one of the team's own dropped (a script wrote it); ``None``
    when nothing is left. A field without a marked cookie is returned as it is."""
    if TEAM_MARKER not in value:
        return value
    own = f"{TEAM_MARKER}{team_tag(team)}-"
    kept: list[tuple[str, str]] = []  # (name, the pair as it is sent)
    marked: set[str] = set()
    for piece in value.split(";"):
        pair = piece.strip(" \t")
        if not pair:
            continue
        name, equals, rest = pair.partition("=")
        start = _prefix_length(name)
        if not name.startswith(TEAM_MARKER, start):
            if TEAM_MARKER not in pair:
                kept.append((name if equals else "", pair))
            # else: a mark out of place (fields joined with "," by a server, a value that
            # holds one): whose it is cannot be told, so it goes.
            continue
        if not name.startswith(own, start):
            continue  # another team's
        name = name[:start] + name[start + len(own) :]
        marked.add(name)
        kept.append(("", f"{name}={rest}" if name else rest))
    pairs = [pair for name, pair in kept if not name or name not in marked]
    return "; ".join(pairs) if pairs else None
