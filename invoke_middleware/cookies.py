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
"""

from __future__ import annotations

__all__ = ["MAX_ATTRIBUTES", "MAX_PATH_LENGTH", "scope_cookies", "scope_set_cookie"]

#: The longest ``Path`` a browser takes (RFC 6265bis §5.6); past it, the root is used.
MAX_PATH_LENGTH = 1024

#: The attributes of a cookie relayed, at most (Chromium reads 16; RFC 6265bis sets no
#: number): the rest are dropped unread, so that a field of 60,000 ``;`` costs what one of
#: 32 does, not a loop turn each. A ``Domain`` or ``Path`` among them goes too.
MAX_ATTRIBUTES = 32


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
    headers: list[tuple[str, str]], root: str, request_path: str
) -> list[tuple[str, str]]:
    """``headers`` with every ``Set-Cookie`` field passed through :func:`scope_set_cookie`,
    and no ``Clear-Site-Data`` (the same list when there is neither)."""
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
            if limited is not None:
                scoped.append((name, limited))
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
