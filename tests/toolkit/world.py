"""The world builder: a Flask host wrapped by the middleware, in front of the recording upstream.

:func:`build_world` registers services of two teams (:data:`TEAM` and :data:`OTHER_TEAM`),
fills every role of :data:`TEAM` and issues a key of each kind, and records the relay hooks'
events; tests drive the result, a :class:`World`, through WebTest. :func:`wrap` is the core
for tests that serve the wrapped host on a real server instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import flask

from invoke_middleware import (
    CredentialKind,
    CredentialStore,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    MembershipStore,
    PipelineSettings,
    RelayFinished,
    RelayStarted,
    Role,
    Service,
    ServiceStatus,
    ServiceType,
)
from tests.toolkit.upstream import RecordingUpstream

if TYPE_CHECKING:
    # Imported when a world is built, not with this module: the gateway process of the
    # integration tests imports it with warnings as errors, and WebOb imports cgi.
    import webtest

TEAM = uuid.UUID("019abc12-4567-7890-abcd-ef1234567891")
OTHER_TEAM = uuid.UUID("019abc12-4567-7890-abcd-000000000002")

#: What :meth:`World.send` asks the container for on ``invoke``, and sends on ``catch_all``.
INVOKE_ENVELOPE = {"method": "GET", "path": "/x"}
RELAY_BODY = b"relay-body"


def make_service(
    slug: str,
    url: str,
    *,
    team: uuid.UUID = TEAM,
    status: ServiceStatus = ServiceStatus.RUNNING,
    service_type: ServiceType = ServiceType.DEPLOYED,
    **extra: Any,
) -> Service:
    """A service of ``team`` at ``url`` (deployed unless ``service_type`` says otherwise),
    running unless ``status`` says otherwise."""
    where = "upstream_url" if service_type is ServiceType.DEPLOYED else "external_url"
    return Service(
        id=uuid.uuid4(),
        team_id=team,
        slug=slug,
        display_name=slug.title(),
        service_type=service_type,
        service_status=status,
        **{where: url},
        **extra,
    )


def make_external_service(
    slug: str, url: str, *, team: uuid.UUID = TEAM, credential_id: str | None = None
) -> Service:
    """A running external service of ``team`` at ``url``, its ``Authorization`` from the
    secret resolver's ``credential_id`` when given."""
    return make_service(
        slug,
        url,
        team=team,
        service_type=ServiceType.EXTERNAL,
        external_auth_credential_id=credential_id,
    )


def user(role: Role | None) -> str:
    """The user id holding ``role`` in :data:`TEAM` (``None``: a user in no team at all)."""
    return f"user-{role.value}" if role is not None else "user-none"


def host_app() -> flask.Flask:
    """A host whose own routes overlap the runtime prefix."""
    app = flask.Flask("host")
    app.config["seen_environs"] = []

    @app.route("/r/other")
    def other() -> str:
        return "host: other"

    @app.route("/r/invokeX")
    def invoke_x() -> str:
        return "host: invokeX"

    @app.route("/r/containers-x")
    def containers_x() -> str:
        return "host: containers-x"

    @app.route("/hello", methods=["GET", "POST"])
    def hello() -> flask.Response:
        app.config["seen_environs"].append(flask.request.environ)
        response = flask.make_response("hello from host", 201)
        response.headers["X-Host"] = "1"
        response.set_cookie("session", "abc")
        return response

    return app


def wrap(host: flask.Flask, services: Iterable[Service], **options: Any) -> InvokeMiddleware:
    """Wrap ``host`` in a middleware whose registry holds ``services`` (``options`` go to it)."""
    middleware = InvokeMiddleware(
        host.wsgi_app, registry=InMemoryServiceRegistry(services), **options
    )
    host.wsgi_app = middleware  # type: ignore[method-assign]
    return middleware


def default_services(upstream_url: str) -> list[Service]:
    """``echo`` and ``based`` (under ``/base``) of :data:`TEAM`, ``theirs`` of the other team,
    and ``svc-<status>`` of :data:`TEAM` for every status but running."""
    return [
        make_service("echo", upstream_url),
        make_service("based", upstream_url + "/base"),
        make_service("theirs", upstream_url, team=OTHER_TEAM),
        *(
            make_service(f"svc-{status.value}", upstream_url, status=status)
            for status in ServiceStatus
            if status is not ServiceStatus.RUNNING
        ),
    ]


@dataclass(kw_only=True)
class World:
    """The wrapped host, its registry and stores, the keys issued, and the upstream behind it.

    ``keys`` holds a raw key by name: ``sk`` (integration), ``sk-other`` (the other team's),
    one device key per role (``owner``, ``admin``, ...) and ``ak`` (an agent of the owner).
    """

    app: webtest.TestApp
    host: flask.Flask
    middleware: InvokeMiddleware
    upstream: RecordingUpstream
    registry: InMemoryServiceRegistry
    credentials: CredentialStore
    memberships: MembershipStore
    keys: dict[str, str] = field(default_factory=dict)
    started: list[RelayStarted] = field(default_factory=list)
    finished: list[RelayFinished] = field(default_factory=list)

    def auth(self, key: str = "sk") -> dict[str, str]:
        """The ``Authorization`` field for the key named ``key``."""
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def invoke(self, slug: str, envelope: dict[str, Any], *, key: str = "sk", **kw: Any) -> Any:
        """``POST /r/invoke/{slug}`` with ``envelope``, as the key named ``key``."""
        headers = {**self.auth(key), **kw.pop("headers", {})}
        return self.app.post_json(f"/r/invoke/{slug}", envelope, headers=headers, **kw)

    def relay(self, path: str, *, key: str = "sk", **kw: Any) -> webtest.TestResponse:
        """``GET /r/containers/{path}`` as the key named ``key``."""
        headers = {**self.auth(key), **kw.pop("headers", {})}
        return self.app.get(f"/r/containers/{path}", headers=headers, **kw)

    def issue(self, kind: CredentialKind, role: Role | None = None) -> str:
        """A new raw key of ``kind`` in :data:`TEAM`; device and agent keys are ``role``'s."""
        user_id = None if kind is CredentialKind.INTEGRATION else user(role)
        return self.credentials.issue(kind, team_id=TEAM, user_id=user_id).key

    def reset(self) -> None:
        """Forget what earlier requests left in the upstream's record and the hooks."""
        self.upstream.received.clear()
        self.started.clear()
        self.finished.clear()

    def send(
        self,
        route: str,
        *,
        slug: str = "echo",
        token: str | None = None,
        team: str | None = None,
    ) -> webtest.TestResponse:
        """One request on ``route`` (``invoke``, ``catch_all``, ``list`` or ``get``), any status.

        ``token`` goes in ``Authorization`` and ``team`` in ``X-Team-ID``, when given.
        """
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if team is not None:
            headers["X-Team-ID"] = team
        if route == "invoke":
            return self.app.post_json(
                f"/r/invoke/{slug}", INVOKE_ENVELOPE, headers=headers, expect_errors=True
            )
        if route == "catch_all":
            headers["Content-Type"] = "application/octet-stream"
            return self.app.post(
                f"/r/containers/{slug}/x", RELAY_BODY, headers=headers, expect_errors=True
            )
        if route == "list":
            return self.app.get("/r/containers", headers=headers, expect_errors=True)
        if route == "get":
            return self.app.get(f"/r/containers/{slug}", headers=headers, expect_errors=True)
        raise ValueError(f"unknown route {route!r}")


def build_world(
    upstream: RecordingUpstream,
    *,
    services: Iterable[Service] | None = None,
    **options: Any,
) -> World:
    """A fresh host, middleware and stores in front of ``upstream``.

    ``services`` default to :func:`default_services`; ``options`` go to the middleware (its
    ``before_relay``/``after_relay`` hooks run before the world's own recorders). Every role
    of :data:`TEAM` is held by :func:`user` ``(role)``; the keys are in :attr:`World.keys`.
    The caller closes ``world.middleware``.
    """
    import webtest

    started: list[RelayStarted] = []
    finished: list[RelayFinished] = []
    host = host_app()
    options.setdefault("settings", PipelineSettings())
    middleware = wrap(
        host,
        default_services(upstream.url) if services is None else services,
        before_relay=[*options.pop("before_relay", ()), started.append],
        after_relay=[*options.pop("after_relay", ()), finished.append],
        **options,
    )
    registry = middleware.registry
    assert isinstance(registry, InMemoryServiceRegistry)
    world = World(
        app=webtest.TestApp(host),
        host=host,
        middleware=middleware,
        upstream=upstream,
        registry=registry,
        credentials=middleware.credentials,
        memberships=middleware.memberships,
        started=started,
        finished=finished,
    )
    for role in Role:
        world.memberships.set_role(TEAM, user(role), role)
        world.keys[role.value] = world.issue(CredentialKind.DEVICE, role)
    world.keys["sk"] = world.issue(CredentialKind.INTEGRATION)
    world.keys["sk-other"] = world.credentials.issue(
        CredentialKind.INTEGRATION, team_id=OTHER_TEAM
    ).key
    world.keys["ak"] = world.issue(CredentialKind.AGENT, Role.OWNER)
    return world
