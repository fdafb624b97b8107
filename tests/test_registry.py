"""The service model refuses records the gateway could not relay to safely (docs/contract.md §2)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from invoke_middleware import InMemoryServiceRegistry, Service, ServiceStatus, ServiceType

TEAM = uuid.uuid4()


def external(url: str, **extra: Any) -> Service:
    return Service(
        id=uuid.uuid4(),
        team_id=TEAM,
        slug="ext",
        display_name="Ext",
        service_type=ServiceType.EXTERNAL,
        service_status=ServiceStatus.RUNNING,
        external_url=url,
        **extra,
    )


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://api.example.com", id="plain-http"),
        pytest.param("ftp://api.example.com", id="other-scheme"),
        pytest.param("//api.example.com", id="scheme-relative"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://user:pw@api.example.com", id="userinfo"),
        pytest.param("https://api.example.com/v1?key=x", id="query"),
        pytest.param("https://api.example.com/#frag", id="fragment"),
        pytest.param("https://api.example.com/a b", id="space"),
        pytest.param("https://api.example.com/" + "a" * 2048, id="too-long"),
    ],
)
def test_external_urls_must_be_plain_https(url: str) -> None:
    with pytest.raises(ValueError, match="external_url"):
        external(url)


def deployed(url: str) -> Service:
    return Service(
        id=uuid.uuid4(),
        team_id=TEAM,
        slug="svc",
        display_name="Svc",
        service_type=ServiceType.DEPLOYED,
        service_status=ServiceStatus.RUNNING,
        upstream_url=url,
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("ftp://10.0.0.7", "absolute http:// or https://", id="other-scheme"),
        pytest.param("http://", "no host", id="no-host"),
        pytest.param("http://user:pw@10.0.0.7:8080", "credentials", id="userinfo"),
        pytest.param("http://user@10.0.0.7", "credentials", id="user-only"),
        pytest.param("http://@10.0.0.7", "credentials", id="empty-userinfo"),
        pytest.param("http://10.0.0.7:99999", "invalid port", id="port-out-of-range"),
        pytest.param("http://10.0.0.7:80a", "invalid port", id="port-not-a-number"),
        pytest.param("http://10.0.0.7/api?x=1", "query", id="query"),
        pytest.param("http://10.0.0.7/api#x", "fragment", id="fragment"),
        pytest.param("http://10.0.0.7/a\nb", "control", id="control-character"),
        # What the transport cannot connect to is refused here, not on each request.
        pytest.param("http://svc.example:0", "invalid port", id="port-zero"),
        pytest.param("http://[::1]x", "malformed authority", id="text-after-ipv6"),
        pytest.param("http://[svc]:8080", "malformed IPv6", id="name-in-brackets"),
        pytest.param("http://a..b", "invalid host name", id="empty-label"),
        pytest.param("http://" + "x" * 64 + ".example", "invalid host name", id="long-label"),
        pytest.param("http://a\u200db.example", "invalid host name", id="idna-disallowed"),
    ],
)
def test_upstream_urls_are_refused_when_the_service_is_created(url: str, reason: str) -> None:
    # Accepted, each of these would fail every request later (or leak a password in listings).
    with pytest.raises(ValueError, match=f"upstream_url.*{reason}"):
        deployed(url)


def test_an_upstream_url_with_a_port_and_base_path_is_accepted() -> None:
    assert deployed("http://10.0.0.7:8080/api").base_url == "http://10.0.0.7:8080/api"


def test_an_upstream_url_with_an_internationalised_name_is_accepted_as_written() -> None:
    assert deployed("http://bücher.example:8080/api").base_url == "http://bücher.example:8080/api"


def test_an_external_url_the_transport_cannot_use_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="external_url has an invalid host name"):
        external("https://a..b/v1")


def test_an_https_external_url_with_a_base_path_is_accepted() -> None:
    assert external("https://api.example.com/v1").base_url == "https://api.example.com/v1"


@pytest.mark.parametrize("slug", ["a", "-ab", "ab-", "AB", "a_b", "a" * 101])
def test_invalid_slugs_are_refused(slug: str) -> None:
    with pytest.raises(ValueError, match="slug"):
        Service(
            id=uuid.uuid4(),
            team_id=TEAM,
            slug=slug,
            display_name="x",
            service_type=ServiceType.DEPLOYED,
            service_status=ServiceStatus.RUNNING,
            upstream_url="http://127.0.0.1:1",
        )


def test_neither_the_credential_reference_nor_the_url_is_in_the_repr() -> None:
    # A host logging a hook's whole event wrote the URL, where a webhook keeps its secret.
    service = external(
        "https://api.example.com/hooks/T0SECRET", external_auth_credential_id="vault:secret/x"
    )
    assert "vault" not in repr(service)
    assert "T0SECRET" not in repr(service)
    assert "slug='ext'" in repr(service)


def test_the_registry_only_answers_for_the_owning_team() -> None:
    registry = InMemoryServiceRegistry([external("https://api.example.com")])
    assert registry.get(TEAM, "ext") is not None
    assert registry.get(uuid.uuid4(), "ext") is None
    assert registry.list(uuid.uuid4()) == []
