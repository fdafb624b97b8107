"""A container's pages, run apart from the shared origin (docs/contract.md §6).

Every service answers on the gateway's origin. A page one team's container serves runs its
scripts there, with every other team's pages: it can read what their scripts stored
(``localStorage``, IndexedDB, cookies a script reads) and frame their pages to read those.
With ``sandbox_pages`` on, the catch-all sends each answer a browser may render as a document
with ``Content-Security-Policy: sandbox …`` (CSP Level 3 §6.3.2; a separate field, so the
container's own policy still applies on top): the page runs in an origin of its own, with
scripts, forms, pop-ups, dialogs and downloads still allowed, but never as the gateway's
origin (no ``allow-same-origin``). What that costs the page: it reads no cookie and no
storage of the origin, and its requests to its own service are cross-origin (``Origin:
null``), so the service must answer them with CORS. An origin per service (a host name per
slug in front of the gateway) keeps pages apart without that cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["PAGE_SANDBOX", "renders_as_page"]

#: The field added to a page's answer: everything a page usually needs, but its origin.
PAGE_SANDBOX: Final = (
    "Content-Security-Policy",
    "sandbox allow-downloads allow-forms allow-modals allow-popups "
    "allow-popups-to-escape-sandbox allow-scripts",
)

# Media types a browser renders as a document that runs scripts (HTML, and XML with its
# XSLT and SVG); any "+xml" type is rendered as XML too.
_DOCUMENT_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "image/svg+xml",
    }
)


def renders_as_page(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a browser may render an answer with ``headers`` as a document that runs
    scripts: its ``Content-Type`` is one of HTML's or XML's, or is missing or not a media
    type at all, which a browser sniffs (and may take for HTML)."""
    typed = False
    for name, value in headers:
        if len(name) == 12 and name.lower() == "content-type":
            typed = True
            essence = value.partition(";")[0].strip(" \t").lower()
            if essence in _DOCUMENT_TYPES or essence.endswith("+xml") or "/" not in essence:
                return True
    return not typed
