"""A container's cookies stay with its service (docs/contract.md §6): through the catch-all, a
``Set-Cookie`` reaches the browser limited to the service's own path, so the browser never
sends it to another team's service or to the host app. WebTest's client keeps cookies as a
browser does (``http.cookiejar``), and the recording upstream shows what each container got."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
import webtest
from werkzeug.test import Client

from invoke_middleware import PipelineSettings
from invoke_middleware.cookies import TEAM_MARKER, team_tag
from tests.toolkit.cookies import setting
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import OTHER_TEAM, TEAM, World, default_services, make_service


def set_cookies(world: World, slug: str, *values: str, key: str = "sk", **kw: object) -> list[str]:
    """Ask ``slug``'s container to set ``values``; the ``Set-Cookie`` fields that came back
    and set a cookie."""
    query = "&".join(f"set={quote(value)}" for value in values)
    response = world.relay(f"{slug}/cookies?{query}", key=key, **kw)
    return setting(response.headers.getall("Set-Cookie"))


def cookie_sent(world: World) -> str | None:
    return world.upstream.last().header("Cookie")


def test_set_cookie_is_kept_to_the_service_path(world: World) -> None:
    fields = setting(world.relay("echo/cookies").headers.getall("Set-Cookie"))
    # The container's "/" is the service's root; without Path, the browser's default is the
    # directory of /cookies, which is "/" for the container too.
    assert fields == ["a=1; Path=/r/containers/echo/", "b=2; Path=/r/containers/echo/"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "s=1; Path=/api; Secure; SameSite=Strict",
            "s=1; Path=/r/containers/echo/api; Secure; SameSite=Strict",
        ),
        ("s=1; Domain=example.com; Max-Age=60", "s=1; Path=/r/containers/echo/; Max-Age=60"),
        (
            "s=1; SameSite=Lax; path=/r/containers/echo/ui",
            "s=1; Path=/r/containers/echo/ui; SameSite=Lax",
        ),
        ("s=1; Path=/r/containers/theirs", "s=1; Path=/r/containers/echo/r/containers/theirs"),
    ],
)
def test_attributes_are_kept_but_path_and_domain(world: World, value: str, expected: str) -> None:
    assert set_cookies(world, "echo", value) == [expected]


def test_default_path_is_the_container_path_directory(world: World) -> None:
    # As a browser computes it from the URL the container was asked for: /deep/cookies -> /deep.
    response = world.relay("echo/deep/cookies?set=x%3D1;%20Path%3Dnot-absolute")
    assert setting(response.headers.getall("Set-Cookie")) == ["x=1; Path=/r/containers/echo/deep"]


def test_host_prefixed_cookie_is_dropped(world: World) -> None:
    # A __Host- cookie must have Path=/: kept to the service, a browser would refuse it, and
    # passed as it is, it would reach every service and the host app.
    fields = set_cookies(world, "echo", "__Host-sid=1; Path=/; Secure", "kept=1")
    assert fields == ["kept=1; Path=/r/containers/echo/"]


def test_browser_sends_a_container_cookie_back_to_its_service_only(world: World) -> None:
    set_cookies(world, "echo", "mine=1; Path=/", "sid=2; Domain=localhost")
    # The other team's service on the same gateway: nothing.
    world.relay("theirs/x", key="sk-other")
    assert cookie_sent(world) is None
    # The host app: nothing either.
    world.app.get("/hello", status=201)
    assert "HTTP_COOKIE" not in world.host.config["seen_environs"][-1]
    # The service that set them: both (and the host's own session, whose Path is "/": the
    # deployment keeps the runtime routes off the host's cookies, docs/contract.md §11.7).
    world.relay("echo/x")
    sent = cookie_sent(world)
    assert sent is not None
    assert sorted(sent.split("; ")) == ["mine=1", "session=abc", "sid=2"]


def test_a_container_cannot_overwrite_the_host_session(world: World) -> None:
    world.app.get("/hello", status=201)  # the host sets session=abc
    set_cookies(world, "echo", "session=stolen; Path=/")
    world.app.get("/hello", status=201)
    assert world.host.config["seen_environs"][-1]["HTTP_COOKIE"] == "session=abc"


def test_the_path_includes_the_prefix_and_the_mount_point(
    make_world: Callable[..., World],
) -> None:
    world = make_world(prefix="/api")
    app = webtest.TestApp(world.middleware, extra_environ={"SCRIPT_NAME": "/my app"})
    response = app.get(
        "/api/r/containers/echo/cookies?set=a%3D1%3B%20Path%3D%2Fx",
        headers=world.auth(),
    )
    assert setting(response.headers.getall("Set-Cookie")) == [
        "a=1; Path=/my%20app/api/r/containers/echo/x"
    ]


def spelled(world: World, target: str, **environ: str) -> list[str]:
    """The ``Set-Cookie`` fields of a request whose target is spelled exactly ``target``
    (werkzeug's client keeps it in ``REQUEST_URI``, as servers do)."""
    query = "?set=a%3D1%3B%20Path%3D%2F"
    response = Client(world.middleware).get(
        target + query,
        headers=world.auth(),
        environ_overrides={"REQUEST_URI": target + query, **environ},
    )
    fields = setting(response.headers.getlist("Set-Cookie"))
    response.close()
    return fields


def test_the_path_is_the_mount_as_the_caller_spelled_it(world: World) -> None:
    # A browser matches the URL as written: the host's mount point as the client spelled it.
    fields = spelled(
        world,
        "/my%20%61pp/r/containers/echo/cookies",
        SCRIPT_NAME="/my app",
        PATH_INFO="/r/containers/echo/cookies",
    )
    assert fields == ["a=1; Path=/my%20%61pp/r/containers/echo/"]


def test_a_route_the_caller_escaped_gets_the_browser_default(world: World) -> None:
    # /r/containers/%65cho is echo for the gateway, but not the path a browser would match
    # /r/containers/echo against: no Path, so the browser keeps the cookie to the URL it asked.
    fields = spelled(world, "/r/containers/%65cho/cookies", PATH_INFO="/r/containers/echo/cookies")
    assert fields == ["a=1"]


def test_a_prefix_holding_a_semicolon_gets_the_browser_default(
    make_world: Callable[..., World],
) -> None:
    # "Path=/api;v=1/..." would be read as Path=/api, the host's.
    world = make_world(prefix="/api;v=1")
    fields = setting(
        world.app.get("/api;v=1/r/containers/echo/cookies", headers=world.auth()).headers.getall(
            "Set-Cookie"
        )
    )
    assert fields == ["a=1", "b=2"]


def test_scope_cookies_off_relays_them_as_written(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(scope_cookies=False))
    fields = world.relay("echo/cookies").headers.getall("Set-Cookie")
    assert fields == ["a=1; Path=/", "b=2"]


def test_invoke_hands_the_fields_over_as_written(world: World) -> None:
    # The envelope is data for the caller, not a response a browser applies.
    res = world.invoke("echo", {"method": "GET", "path": "/cookies"})
    assert res.json["headers"]["set-cookie"] == ["a=1; Path=/", "b=2"]


@pytest.fixture
def same_slug(make_world: Callable[..., World], upstream: RecordingUpstream) -> World:
    """A world where the other team has an ``echo`` too: one path, two teams' services."""
    services = [
        *default_services(upstream.url),
        make_service("echo", upstream.url, team=OTHER_TEAM),
    ]
    return make_world(services=services)


def sent_by_the_browser(world: World, key: str) -> list[str]:
    """The cookies the browser's request to ``echo`` brought its container, as ``key``."""
    world.relay("echo/x", key=key)
    sent = cookie_sent(world)
    return sorted(sent.split("; ")) if sent else []


def test_a_session_cookie_never_reaches_the_other_teams_service_of_the_slug(
    same_slug: World,
) -> None:
    world = same_slug
    ours = set_cookies(world, "echo", "sid=ours; HttpOnly", "theme=dark")
    assert ours == [
        f"{TEAM_MARKER}{team_tag(TEAM)}-sid=ours; Path=/r/containers/echo/; HttpOnly",
        "theme=dark; Path=/r/containers/echo/",
    ]
    set_cookies(world, "echo", "sid=theirs; HttpOnly", key="sk-other")
    # Each team's container gets its own session, under the name it gave it; the cookie a
    # script reads is the shared origin's, and both get it.
    assert sent_by_the_browser(world, "sk") == ["sid=ours", "theme=dark"]
    assert sent_by_the_browser(world, "sk-other") == ["sid=theirs", "theme=dark"]


def test_a_logout_without_httponly_ends_the_session(same_slug: World) -> None:
    world = same_slug
    set_cookies(world, "echo", "sid=ours; HttpOnly")
    world.relay("echo/cookies?set=sid%3D%3B%20Max-Age%3D0")
    assert sent_by_the_browser(world, "sk") == []


def test_a_new_value_written_without_httponly_replaces_the_session(same_slug: World) -> None:
    # Not a removal: the cookie now has a value a script may read. The browser must not keep
    # the session beside it, which the container would get instead.
    world = same_slug
    set_cookies(world, "echo", "sid=ours; HttpOnly")
    set_cookies(world, "echo", "sid=guest")
    assert sent_by_the_browser(world, "sk") == ["sid=guest"]
    # And back: the plain one goes when the session is set again.
    set_cookies(world, "echo", "sid=again; HttpOnly")
    assert sent_by_the_browser(world, "sk") == ["sid=again"]
    assert sent_by_the_browser(world, "sk-other") == []


def test_a_nameless_cookie_is_not_relayed(same_slug: World) -> None:
    # A browser sends it back as its value alone: "=sid=planted" would reach the other
    # team's service as its session (WebTest's cookie jar would not even keep it).
    world = same_slug
    planted = f"={TEAM_MARKER}{team_tag(TEAM)}-sid=planted"
    response = world.relay(f"echo/cookies?set={quote(planted)}&set=%3Dsid%3Dx", key="sk-other")
    assert response.headers.getall("Set-Cookie") == []


def test_a_container_cannot_plant_a_cookie_for_the_other_team(same_slug: World) -> None:
    world = same_slug
    planted = f"{TEAM_MARKER}{team_tag(TEAM)}-sid=planted"
    assert set_cookies(world, "echo", planted, key="sk-other") == []
    assert sent_by_the_browser(world, "sk") == []


def test_a_cookie_a_script_wrote_gives_way_to_the_teams_own(same_slug: World) -> None:
    world = same_slug
    set_cookies(world, "echo", "sid=ours; HttpOnly")
    world.app.set_cookie("sid", "script")  # as a page's script on the origin would
    assert sent_by_the_browser(world, "sk") == ["sid=ours"]
    assert sent_by_the_browser(world, "sk-other") == ['sid="script"']  # WebTest quotes the value


def test_scope_cookies_off_forwards_every_cookie(make_world: Callable[..., World]) -> None:
    world = make_world(settings=PipelineSettings(scope_cookies=False))
    marked = f"{TEAM_MARKER}{team_tag(OTHER_TEAM)}-sid"
    world.app.set_cookie(marked, "1")
    assert sent_by_the_browser(world, "sk") == [f'{marked}="1"']  # WebTest quotes the value
