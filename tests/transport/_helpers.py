"""Small helpers shared by the transport tests."""

from __future__ import annotations

from collections.abc import Iterable

from invoke_middleware.transport import Timeouts, Transport, UpstreamRequest, UpstreamResponse

QUICK = Timeouts(connect=5.0, read=10.0, total=20.0)


def send(
    transport: Transport,
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    content_length: int | None = None,
    timeouts: Timeouts = QUICK,
    tenant: str | None = None,
    share: str | None = None,
) -> UpstreamResponse:
    return transport.send(
        UpstreamRequest(
            method=method,
            url=url,
            headers=tuple(headers),
            body=body,
            content_length=content_length,
            timeouts=timeouts,
            tenant=tenant,
            share=share,
        )
    )


def fetch(
    transport: Transport, method: str, url: str, **options: object
) -> tuple[UpstreamResponse, bytes]:
    """Send, read the whole body, close; return the response and its body."""
    response = send(transport, method, url, **options)  # type: ignore[arg-type]
    return response, drain(response)


def drain(response: UpstreamResponse) -> bytes:
    """Read the whole body, then close the response (also when reading fails)."""
    with response:
        return b"".join(response)


def values(response: UpstreamResponse, name: str) -> list[str]:
    return response.headers.get_all(name)
