"""Services: the record the gateway relays to, and the registry it looks them up in.

A :class:`ServiceRegistry` is anything with ``get(team_id, slug)`` and ``list(team_id)``.
:class:`InMemoryServiceRegistry` is the default; :mod:`invoke_middleware.store.sql` keeps
services in a database.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from invoke_middleware.limits import ServiceLimits
from invoke_middleware.transport._origin import UnusableURLError, split_url
from invoke_middleware.transport.base import Timeouts

#: docs/contract.md §1: lower-case letters, digits and dashes, 3 to 100 characters, no dash at
#: either end.
SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{1,98}[a-z0-9]")

MAX_EXTERNAL_URL_LENGTH = 2048


class ServiceType(StrEnum):
    """How the gateway reaches a service."""

    DEPLOYED = "deployed"
    EXTERNAL = "external"


class ServiceStatus(StrEnum):
    """Lifecycle of a service. Only ``running`` services are relayed to."""

    CREATED = "created"
    DEPLOYING = "deploying"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def is_valid_slug(slug: str) -> bool:
    """Whether ``slug`` has the shape docs/contract.md §1 allows."""
    return SLUG_PATTERN.fullmatch(slug) is not None


@dataclass(frozen=True, kw_only=True)
class Service:
    """A container service as the gateway sees it (docs/contract.md §2).

    ``upstream_url`` is where a deployed service is reached (whatever the deployed transport
    needs, normally ``http://host:port/base``); ``external_url`` is the ``https://`` URL of an
    external one. Neither ever leaves the gateway: see :meth:`public_metadata`.
    """

    id: uuid.UUID
    team_id: uuid.UUID
    slug: str
    display_name: str
    service_type: ServiceType
    service_status: ServiceStatus
    # Out of the repr, like the credential reference: hooks receive the service, a host may
    # log whole events, and some APIs take a secret in the URL's path (webhooks).
    upstream_url: str | None = field(default=None, repr=False)
    external_url: str | None = field(default=None, repr=False)
    external_auth_credential_id: str | None = field(default=None, repr=False)
    usage_prompt: str | None = None
    openapi_url: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Rate and concurrency of this service, over the gateway-wide limits.
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        if not is_valid_slug(self.slug):
            raise ValueError(f"invalid slug {self.slug!r}")
        if self.service_type is ServiceType.DEPLOYED:
            validate_upstream_url(self.upstream_url)
        else:
            validate_external_url(self.external_url)

    @property
    def base_url(self) -> str:
        """The origin and base path that caller paths are joined to."""
        url = self.upstream_url if self.service_type is ServiceType.DEPLOYED else self.external_url
        assert url is not None  # guaranteed by __post_init__
        return url

    @property
    def is_running(self) -> bool:
        return self.service_status is ServiceStatus.RUNNING

    def with_status(self, status: ServiceStatus) -> Service:
        """A copy of this service in another status."""
        return replace(self, service_status=status)

    def public_metadata(self) -> dict[str, Any]:
        """What discovery routes show: never the upstream, the URL or the credential reference."""
        return {
            "id": str(self.id),
            "team_id": str(self.team_id),
            "slug": self.slug,
            "display_name": self.display_name,
            "service_type": self.service_type.value,
            "service_status": self.service_status.value,
            "usage_prompt": self.usage_prompt,
            "openapi_url": self.openapi_url,
        }


def validate_upstream_url(url: str | None) -> None:
    """Raise :class:`ValueError` unless ``url`` is an absolute ``http://`` or ``https://`` URL
    a transport can send to (docs/contract.md §2)."""
    if not url:
        raise ValueError("a deployed service needs an upstream_url")
    _validate_base_url(url, "upstream_url", ("http", "https"))


def validate_external_url(url: str | None) -> None:
    """Raise :class:`ValueError` unless ``url`` is an absolute ``https://`` URL
    (docs/contract.md §2)."""
    if not url:
        raise ValueError("an external service needs an external_url")
    if len(url) > MAX_EXTERNAL_URL_LENGTH:
        raise ValueError(f"external_url is longer than {MAX_EXTERNAL_URL_LENGTH} characters")
    _validate_base_url(url, "external_url", ("https",))


def _validate_base_url(url: str, name: str, schemes: tuple[str, ...]) -> None:
    """The one rule for the URLs caller paths are joined to (``upstream_url``,
    ``external_url``): checked when the service is created, so that no request fails later.

    The host and port are read by the transports' own :func:`split_url`, so a URL accepted
    here is one they can send to. It also refuses credentials in the URL, which would be sent
    to every request's host and shown by every listing; an external service's secret goes in
    ``external_auth_credential_id``.
    """
    spelled = " or ".join(f"{scheme}://" for scheme in schemes)
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        raise ValueError(f"{name} must not contain spaces or control characters")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        raise ValueError(f"{name} must be an absolute {spelled} URL")
    try:
        split_url(url)
    except UnusableURLError as exc:
        raise ValueError(f"{name} {exc.reason}") from None
    if "?" in url:
        # The caller's path and query are joined to it; a query of its own has no place then.
        raise ValueError(f"{name} must not carry a query")
    if "#" in url:
        raise ValueError(f"{name} must not contain a fragment")


class ServiceRegistry(Protocol):
    """Where the gateway looks services up. Both methods only ever see one team's services.

    A registry whose storage cannot answer now raises
    :class:`~invoke_middleware.errors.StoreUnavailableError`: the request is answered 503 with
    ``Retry-After``, where any other exception is a 500."""

    def get(self, team_id: uuid.UUID, slug: str) -> Service | None:
        """The service ``slug`` of ``team_id``, or ``None``."""
        ...

    def list(self, team_id: uuid.UUID) -> Sequence[Service]:
        """Every service of ``team_id``, in slug order."""
        ...


class InMemoryServiceRegistry:
    """A thread-safe registry held in a dict; the default, and handy in tests."""

    def __init__(self, services: Iterable[Service] = ()) -> None:
        self._lock = threading.Lock()
        self._services: dict[tuple[uuid.UUID, str], Service] = {}
        for service in services:
            self.add(service)

    def add(self, service: Service) -> None:
        """Add or replace ``service`` (keyed by team and slug)."""
        with self._lock:
            self._services[(service.team_id, service.slug)] = service

    def remove(self, team_id: uuid.UUID, slug: str) -> None:
        with self._lock:
            self._services.pop((team_id, slug), None)

    def get(self, team_id: uuid.UUID, slug: str) -> Service | None:
        return self._services.get((team_id, slug))

    def list(self, team_id: uuid.UUID) -> Sequence[Service]:
        with self._lock:
            found = [s for (team, _), s in self._services.items() if team == team_id]
        return sorted(found, key=lambda s: s.slug)
