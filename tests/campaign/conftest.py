"""Fixtures of the standing campaign: the contract fuzz, the soak and the hostile upstreams.

Every suite runs in CI in a short form (seconds). ``INVOKE_CAMPAIGN=long`` runs the long
form, whose figures go to ``bench/results/campaign.md`` (see ``bench/campaign.py``)::

    INVOKE_CAMPAIGN=long .venv/bin/python -m pytest -q tests/campaign
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.wsgi import get_input_stream

from tests.upstreams import tls_files  # noqa: F401  (fixture)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: ``long`` runs the long form of every suite; anything else (or nothing) the short one.
LONG = os.environ.get("INVOKE_CAMPAIGN", "").strip().lower() == "long"


def scale(short: int, long: int) -> int:
    """``long`` under ``INVOKE_CAMPAIGN=long``, else ``short``."""
    return long if LONG else short


def answering_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A container that never fails: ``200`` and a JSON account of the request, whatever it is.

    With it behind the gateway, every 5xx a test sees is the gateway's own.
    """
    received = len(get_input_stream(environ, max_content_length=None).read())
    body = json.dumps(
        {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("RAW_URI") or environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "body_bytes": received,
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
