"""Transports: how the gateway reaches a service.

:class:`HTTPTransport` is the default. :class:`RequestsTransport` sends through a
:class:`requests.Session` a host configured itself; :class:`WSGITransport` calls a WSGI
application in process. All honour the contract in :mod:`invoke_middleware.transport.base`.

The transports are imported on first use: the contract alone (what a module needs to name
:class:`Timeouts` or to implement a transport) loads neither :mod:`http.client` and
:mod:`ssl` nor requests and urllib3.
"""

from typing import TYPE_CHECKING

from invoke_middleware._lazy import lazy_attributes

from .base import (
    DEFAULT_TIMEOUTS,
    Closeable,
    FileRegion,
    SpooledBody,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from .http import HTTPTransport
    from .requests import RequestsTransport
    from .wsgi import WSGITransport

__all__ = [
    "DEFAULT_TIMEOUTS",
    "Closeable",
    "FileRegion",
    "HTTPTransport",
    "RequestsTransport",
    "SpooledBody",
    "Timeouts",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
    "WSGITransport",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "HTTPTransport": "invoke_middleware.transport.http",
        "RequestsTransport": "invoke_middleware.transport.requests",
        "WSGITransport": "invoke_middleware.transport.wsgi",
    },
)

del TYPE_CHECKING, lazy_attributes
