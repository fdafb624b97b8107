"""The TLS settings every transport shares: verification always on, an optional CA bundle."""

from __future__ import annotations

import os
import ssl

#: Anything that names a CA bundle file (PEM).
CABundle = str | os.PathLike[str]

#: The most data one TLS record carries (RFC 8446 §5.1): the most one send over TLS is given.
#: A TLS send returns only once all it was given is written, so its timeout bounds the whole
#: piece; a record at a time, it bounds each wait, as on a plain connection.
TLS_RECORD = 16384

#: How a send or the wait for a response head fails when the peer closed or reset the
#: connection. A TLS peer that closes without close_notify reads as SSLEOFError.
PEER_CLOSED = (ConnectionError, ssl.SSLEOFError)


def create_ssl_context(ca_bundle: CABundle | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name.

    ``ca_bundle`` replaces the system trust store when given (a private CA for internal
    services, say). The context offers only HTTP/1.1 through ALPN (RFC 7301), as the
    transports speak nothing else.
    """
    context = ssl.create_default_context(
        cafile=os.fspath(ca_bundle) if ca_bundle is not None else None
    )
    context.set_alpn_protocols(["http/1.1"])
    return context


def resolve_ssl_context(
    *, ca_bundle: CABundle | None, ssl_context: ssl.SSLContext | None
) -> ssl.SSLContext:
    """The context a transport uses: the caller's own, or one built by :func:`create_ssl_context`.

    A caller's context is used as given (it may carry a client certificate for mTLS), but one
    that would skip verification is refused: TLS to services is always verified
    (docs/contract.md §5).
    """
    if ssl_context is None:
        return create_ssl_context(ca_bundle)
    if ca_bundle is not None:
        raise ValueError("Pass either ca_bundle or ssl_context, not both.")
    if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
        raise ValueError("ssl_context must verify certificates and host names.")
    return ssl_context
