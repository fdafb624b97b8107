"""A container's cookies, kept to its own service (docs/contract.md §6).

Every service answers on the gateway's origin, each below a path of its own
(``/r/containers/{slug}/``). A browser sends a cookie to every path its ``Path`` attribute
covers, so a container that sets ``sid=…; Path=/`` (or sets a cookie without ``Path`` from a
short URL) would have it sent to every other team's service and to the host application, and
could overwrite theirs. The catch-all therefore rewrites each ``Set-Cookie`` field it relays,
as a path-mounting reverse proxy does (nginx's ``proxy_cookie_path``), but for every path:

- ``Path`` becomes the container's path re-rooted below its service's public path:
  ``Path=/`` from ``echo`` becomes ``Path=/r/containers/echo/``, ``Path=/api`` becomes
  ``Path=/r/containers/echo/api``. A path already below the service's own (a container that
  knows where it is mounted) is kept. Without a usable ``Path`` the browser's default (RFC 6265
  §5.1.4) is computed from the path the container was asked for, then re-rooted the same way;
- ``Domain`` is dropped, so a cookie never reaches another host of the domain;
- a ``__Host-`` cookie, which a browser accepts only with ``Path=/``, is dropped whole.

Everything else (name, value, ``Expires``, ``Max-Age``, ``Secure``, ``HttpOnly``,
``SameSite``, unknown attributes) is relayed as the container wrote it.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["MAX_PATH_LENGTH", "scope_cookies", "scope_set_cookie", "service_root"]

#: The longest ``Path`` a browser takes (RFC 6265bis §5.6); past it, the service root is used.
MAX_PATH_LENGTH = 1024

# Percent-encoding a mount point (SCRIPT_NAME) for a Path attribute: RFC 3986 path characters
# stay as they are, but never ';', which would end the attribute.
_PATH_SAFE = "/-._~!$&'()*+,=:@"


def service_root(script_name: str, mount: str) -> str:
    """The public path of a service's routes: the host's mount point (``SCRIPT_NAME``, as
    decoded by the server), percent-encoded, then ``mount`` (the gateway's prefix and
    ``/r/containers/{slug}``, plain ASCII)."""
    if not script_name:
        return mount
    return quote(script_name.encode("latin-1", "replace"), safe=_PATH_SAFE) + mount


def scope_set_cookie(value: str, root: str, request_path: str) -> str | None:
    """``value`` (one ``Set-Cookie`` field) limited to the service whose routes start at
    ``root``, or ``None`` when the cookie cannot be limited and must be dropped.

    ``request_path`` is the path the container was asked for (the catch-all's tail), from which
    a browser would compute the cookie's default path.
    """
    pair, _, attributes = value.partition(";")
    # A pair without "=" is a value with an empty name (RFC 6265bis §5.6), which browsers
    # refuse when it starts like a prefixed name; either way it is the text to check.
    if pair.partition("=")[0].strip(" \t")[:7].lower() == "__host-":
        return None
    kept: list[str] = []
    path: str | None = None
    if attributes:
        for attribute in attributes.split(";"):
            key = attribute.partition("=")[0].strip(" \t").lower()
            if key == "path":
                # The last Path attribute counts (RFC 6265 §5.3 step 7), if it is absolute.
                given = attribute.partition("=")[2].strip(" \t")
                path = given if given.startswith("/") else None
            elif key != "domain":
                kept.append(attribute)
    if path is None:
        path = _default_path(request_path)
    if not _within(path, root):
        path = root + path
    if len(path) > MAX_PATH_LENGTH:
        path = root + "/"
    kept.append(f" Path={path}")
    return pair + ";" + ";".join(kept)


def scope_cookies(
    headers: list[tuple[str, str]], script_name: str, mount: str, request_path: str
) -> list[tuple[str, str]]:
    """``headers`` with every ``Set-Cookie`` field passed through :func:`scope_set_cookie` for
    the service at :func:`service_root` of ``script_name`` and ``mount`` (the same list when
    there is none)."""
    if not any(len(name) == 10 and name.lower() == "set-cookie" for name, _ in headers):
        return headers
    root = service_root(script_name, mount)
    scoped: list[tuple[str, str]] = []
    for name, value in headers:
        if len(name) == 10 and name.lower() == "set-cookie":
            limited = scope_set_cookie(value, root, request_path)
            if limited is not None:
                scoped.append((name, limited))
        else:
            scoped.append((name, value))
    return scoped


def _default_path(request_path: str) -> str:
    """RFC 6265 §5.1.4: the directory of the request's path (``/`` at least)."""
    path = request_path.partition("?")[0]
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rindex("/")]


def _within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (RFC 6265 §5.1.4 path-match)."""
    return path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/")
