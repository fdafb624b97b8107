"""Fixtures of the standing campaign: the contract fuzz, the soak and the hostile upstreams.

Every suite runs in CI in a short form (seconds). ``INVOKE_CAMPAIGN=long`` runs the long
form, whose figures go to ``bench/results/campaign.md`` (see ``bench/campaign.py``)::

    INVOKE_CAMPAIGN=long .venv/bin/python -m pytest -q tests/campaign
"""

from __future__ import annotations

import base64
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

    With it behind the gateway, every 5xx a test sees is the gateway's own. The account
    (``method``, ``path``, ``query``, ``token``: the ``X-Token`` header, ``body_base64``) lets
    a caller check that the answer is to its own request.
    """
    body = get_input_stream(environ, max_content_length=None).read()
    account = json.dumps(
        {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "token": environ.get("HTTP_X_TOKEN"),
            "body_base64": base64.b64encode(body).decode(),
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(account)))]
    )
    return [account]


def record_figures(suite: str, figures: dict[str, object]) -> None:
    """Append a suite's figures to the file ``INVOKE_CAMPAIGN_REPORT`` names, if any
    (``bench/campaign.py`` reads it to write ``bench/results/campaign.md``)."""
    path = os.environ.get("INVOKE_CAMPAIGN_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps({"suite": suite, "long": LONG, **figures}) + "\n")
