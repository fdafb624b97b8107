"""Credential kinds and keys: one enum names every kind, a key's prefix names its kind."""

from __future__ import annotations

import pytest

from invoke_middleware.auth import keys
from invoke_middleware.auth.keys import PREFIX_LENGTH, generate_key, key_prefix
from invoke_middleware.auth.principal import CredentialKind

KEY_KINDS = [
    pytest.param(CredentialKind.INTEGRATION, "sk-", id="integration"),
    pytest.param(CredentialKind.DEVICE, "dk-", id="device"),
    pytest.param(CredentialKind.AGENT, "ak-", id="agent"),
]


@pytest.mark.parametrize(("kind", "prefix"), KEY_KINDS)
def test_a_generated_key_starts_with_its_kinds_prefix_and_reads_back_as_that_kind(
    kind: CredentialKind, prefix: str
) -> None:
    key = generate_key(kind)

    assert kind.key_prefix == prefix
    assert key.startswith(prefix)
    assert len(key) == len(prefix) + 43
    assert CredentialKind.of_key(key) is kind
    assert len(key_prefix(key)) == PREFIX_LENGTH


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("eyJhbGciOiJIUzI1NiJ9.e30.sig", id="jwt"),
        pytest.param("xk-" + "a" * 43, id="unknown-prefix"),
        pytest.param("SK-" + "a" * 43, id="upper-case"),
        pytest.param("", id="empty"),
    ],
)
def test_a_token_without_a_key_prefix_has_no_key_kind(token: str) -> None:
    assert CredentialKind.of_key(token) is None


def test_jwts_have_no_key_prefix_and_no_keys() -> None:
    assert CredentialKind.JWT.key_prefix is None
    with pytest.raises(ValueError, match="not keys"):
        generate_key(CredentialKind.JWT)


@pytest.mark.parametrize(("kind", "prefix"), KEY_KINDS)
def test_a_kind_is_also_named_by_its_key_prefix_as_stored_databases_hold_it(
    kind: CredentialKind, prefix: str
) -> None:
    assert CredentialKind(prefix) is kind
    assert CredentialKind(kind.value) is kind


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a valid CredentialKind"):
        CredentialKind("xk-")


def test_the_former_key_kind_name_still_works_with_a_warning() -> None:
    with pytest.deprecated_call():
        key_kind = keys.KeyKind
    assert key_kind is CredentialKind
    assert key_kind.INTEGRATION is CredentialKind.INTEGRATION
    with pytest.deprecated_call():
        assert key_kind.of("dk-" + "a" * 43) is CredentialKind.DEVICE
