"""Which answers a browser may render as a page that runs scripts (docs/contract.md §6): the
ones ``sandbox_pages`` sends with ``Content-Security-Policy: sandbox``."""

from __future__ import annotations

import pytest

from invoke_middleware.pages import PAGE_SANDBOX, renders_as_page


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "TEXT/HTML; charset=utf-8",
        " text/html ;charset=utf-8",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/xml",
        "text/xml",
        "text/xsl",
        "application/atom+xml",
        # Not a media type: a browser sniffs the body, and may find HTML.
        "",
        "html",
        "nonsense",
    ],
)
def test_documents_and_what_a_browser_sniffs_are_pages(content_type: str) -> None:
    assert renders_as_page([("Content-Length", "3"), ("Content-Type", content_type)])


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/problem+json",
        "text/plain; charset=utf-8",
        "text/event-stream",
        "text/css",
        "text/javascript",
        "image/png",
        "application/octet-stream",
        "application/pdf",
    ],
)
def test_data_is_not_a_page(content_type: str) -> None:
    assert not renders_as_page([("content-type", content_type)])


def test_an_answer_without_a_media_type_is_a_page() -> None:
    assert renders_as_page([("Content-Length", "0")])
    assert renders_as_page([])


def test_any_field_that_names_a_document_makes_a_page() -> None:
    # Two fields: which one a browser takes differs between them; either could be the page.
    assert renders_as_page([("Content-Type", "application/json"), ("Content-Type", "text/html")])


def test_the_sandbox_keeps_scripts_but_never_the_origin() -> None:
    name, value = PAGE_SANDBOX
    assert name == "Content-Security-Policy"
    tokens = value.split()
    assert tokens[0] == "sandbox"
    assert "allow-scripts" in tokens
    assert "allow-same-origin" not in tokens
    assert "allow-top-navigation" not in tokens
