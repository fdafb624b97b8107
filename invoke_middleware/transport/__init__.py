"""Transports: how the gateway reaches a service.

:class:`HTTPTransport` is the default. :class:`RequestsTransport` sends through a
:class:`requests.Session` a host configured itself; :class:`WSGITransport` calls a WSGI
application in process. All honour the contract in :mod:`invoke_middleware.transport.base`.
"""

from .base import DEFAULT_TIMEOUTS, Timeouts, Transport, UpstreamRequest, UpstreamResponse
from .http import HTTPTransport
from .requests import RequestsTransport
from .wsgi import WSGITransport

__all__ = [
    "DEFAULT_TIMEOUTS",
    "HTTPTransport",
    "RequestsTransport",
    "Timeouts",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
    "WSGITransport",
]
