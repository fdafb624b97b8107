"""Reading the ``Set-Cookie`` fields the catch-all relays (docs/contract.md §6)."""

from __future__ import annotations


def setting(fields: list[str]) -> list[str]:
    """The ``Set-Cookie`` ``fields`` that set a cookie: not the removals of each cookie's other
    spelling (``name=; Max-Age=0; …``) that the gateway adds beside them."""
    return [field for field in fields if field.split(";", 2)[1:2] != [" Max-Age=0"]]
