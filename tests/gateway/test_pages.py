"""A container's pages run apart from the shared origin when ``sandbox_pages`` is on
(docs/contract.md §6): through the catch-all, an answer a browser may render as a page gets
``Content-Security-Policy: sandbox`` beside the container's own policy; data does not."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from invoke_middleware import PipelineSettings
from invoke_middleware.pages import PAGE_SANDBOX
from tests.toolkit.world import World


def fields_of(world: World, content_type: str | None, *extra: str) -> list[str]:
    """The ``Content-Security-Policy`` fields of an answer of ``content_type`` (``None``:
    without one) and the ``extra`` fields (``Name=value`` query pairs)."""
    pairs = [] if content_type is None else [f"Content-Type={quote(content_type)}"]
    response = world.relay("echo/fields?" + "&".join([*pairs, *extra]))
    csp: list[str] = response.headers.getall("Content-Security-Policy")
    return csp


def test_sandbox_pages_sends_a_page_to_an_origin_of_its_own(
    make_world: Callable[..., World],
) -> None:
    world = make_world(settings=PipelineSettings(sandbox_pages=True))
    sandbox = PAGE_SANDBOX[1]
    assert fields_of(world, "text/html; charset=utf-8") == [sandbox]
    assert fields_of(world, "image/svg+xml") == [sandbox]
    # The container's own policy stays beside it: a browser enforces both.
    assert fields_of(world, "text/html", "Content-Security-Policy=default-src%20%27self%27") == [
        "default-src 'self'",
        sandbox,
    ]
    # Data is not a page: an API answer carries nothing more.
    assert fields_of(world, "application/json") == []


def test_an_answer_without_a_media_type_is_sandboxed(make_world: Callable[..., World]) -> None:
    # A browser sniffs it, and may find HTML.
    world = make_world(settings=PipelineSettings(sandbox_pages=True))
    response = world.relay("echo/fields?X-Untyped=")
    assert "Content-Type" not in response.headers
    assert response.headers.getall("Content-Security-Policy") == [PAGE_SANDBOX[1]]


def test_pages_are_not_sandboxed_by_default(world: World) -> None:
    assert fields_of(world, "text/html") == []
