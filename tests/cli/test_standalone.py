"""The standalone gateway's parts, in process: the host app, the environment secret
resolver, and the assembly from a configuration file (JWT keys, secrets of external
services)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from webtest import TestApp

from invoke_middleware._toml_config import ConfigError, load_config, starter_config
from invoke_middleware.auth.keys import KeyKind
from invoke_middleware.auth.principal import Role
from invoke_middleware.registry import Service, ServiceStatus, ServiceType
from invoke_middleware.standalone import (
    EnvironmentSecretResolver,
    StandaloneGateway,
    build_gateway,
    host_app,
)
from invoke_middleware.testing import (
    MockTransport,
    generate_keypair,
    make_response,
    mint_jwt,
)
from invoke_middleware.transport.base import UpstreamRequest, UpstreamResponse

TEAM = uuid.UUID("2c9f7a30-1b4e-4d6a-8f2c-5e7d9b0a1c3e")


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        pytest.param("/healthz", "GET", 200, id="health"),
        pytest.param("/healthz", "HEAD", 200, id="health-head"),
        pytest.param("/healthz", "POST", 405, id="health-post"),
        pytest.param("/", "GET", 404, id="root"),
        pytest.param("/r/other", "GET", 404, id="not-a-runtime-route"),
    ],
)
def test_the_host_app_answers_health_and_nothing_else(path: str, method: str, status: int) -> None:
    response = TestApp(host_app).request(path, method=method, expect_errors=True)
    assert response.status_int == status
    assert response.headers["Content-Type"] == "application/json"
    if method == "HEAD":
        assert response.body == b""
    else:
        assert isinstance(json.loads(response.body), dict)


@pytest.mark.parametrize(
    ("environ", "reference", "expected"),
    [
        pytest.param({"BILLING_AUTH": "Bearer xyz"}, "billing", "Bearer xyz", id="verbatim"),
        pytest.param({"BILLING_AUTH": "Basic dTpw"}, "billing", "Basic dTpw", id="any-scheme"),
        pytest.param({"BILLING_AUTH": "Bearer xyz"}, "other", None, id="unknown-reference"),
        pytest.param({}, "billing", None, id="variable-unset"),
        pytest.param({"BILLING_AUTH": ""}, "billing", None, id="variable-empty"),
    ],
)
def test_the_secret_resolver_reads_the_named_environment_variable(
    environ: dict[str, str], reference: str, expected: str | None
) -> None:
    resolver = EnvironmentSecretResolver({"billing": "BILLING_AUTH"}, environ)
    assert resolver(reference) == expected
    assert "xyz" not in repr(resolver)


def test_the_secret_resolver_reads_the_environment_at_request_time() -> None:
    environ: dict[str, str] = {}
    resolver = EnvironmentSecretResolver({"billing": "BILLING_AUTH"}, environ)
    assert resolver("billing") is None
    environ["BILLING_AUTH"] = "Bearer rotated"
    assert resolver("billing") == "Bearer rotated"


# -- build_gateway ---------------------------------------------------------------------------


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(starter_config() + extra)
    return path


@pytest.fixture
def assembled(tmp_path: Path) -> Iterator[tuple[Path, list[StandaloneGateway]]]:
    """A place for configs, and every gateway built from them closed afterwards."""
    built: list[StandaloneGateway] = []
    yield tmp_path, built
    for gateway in built:
        gateway.close()


def _build(
    built: list[StandaloneGateway], path: Path, environ: dict[str, str]
) -> StandaloneGateway:
    gateway = build_gateway(load_config(path), environ)
    built.append(gateway)
    gateway.store.init()
    return gateway


def test_an_external_service_gets_its_secret_from_the_environment(
    assembled: tuple[Path, list[StandaloneGateway]],
) -> None:
    tmp_path, built = assembled
    config = _config(tmp_path, 'billing-api = "BILLING_AUTH"\n')
    gateway = _build(built, config, {"BILLING_AUTH": "Bearer upstream-secret"})
    gateway.store.services.add(
        Service(
            id=uuid.uuid4(),
            team_id=TEAM,
            slug="billing",
            display_name="Billing",
            service_type=ServiceType.EXTERNAL,
            service_status=ServiceStatus.RUNNING,
            external_url="https://billing.example/v1",
            external_auth_credential_id="billing-api",
        )
    )
    key = gateway.store.credentials.issue(KeyKind.INTEGRATION, team_id=TEAM).key
    seen: list[UpstreamRequest] = []

    def answer(request: UpstreamRequest) -> UpstreamResponse:
        seen.append(request)
        return make_response(200, body=b"{}")

    # Only the egress (external) transport is replaced: nothing leaves the machine.
    gateway.app.gateway.egress_transport = MockTransport(answer)
    response = TestApp(gateway.app).get(
        "/r/containers/billing/invoices",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_int == 200
    assert len(seen) == 1
    assert seen[0].url == "https://billing.example/v1/invoices"
    assert dict(seen[0].headers)["Authorization"] == "Bearer upstream-secret"


def test_a_public_key_file_verifies_user_jwts(
    assembled: tuple[Path, list[StandaloneGateway]],
) -> None:
    tmp_path, built = assembled
    pair = generate_keypair("ES256")
    (tmp_path / "idp.pem").write_bytes(pair.public_pem)
    config = _config(tmp_path, '[jwt]\nalgorithms = ["ES256"]\npublic_key_file = "idp.pem"\n')
    gateway = _build(built, config, {})
    gateway.store.memberships.set_role(TEAM, "ada", Role.VIEWER)
    token = mint_jwt(secret_or_private_key=pair.private_pem, sub="ada", algorithm="ES256")
    app = TestApp(gateway.app)
    headers = {"Authorization": f"Bearer {token}", "X-Team-ID": str(TEAM)}
    assert app.get("/r/containers", headers=headers).json == {"services": []}
    other = generate_keypair("ES256")
    forged = mint_jwt(secret_or_private_key=other.private_pem, sub="ada", algorithm="ES256")
    headers["Authorization"] = f"Bearer {forged}"
    assert app.get("/r/containers", headers=headers, expect_errors=True).status_int == 401


def test_a_secret_file_loses_its_trailing_newline(
    assembled: tuple[Path, list[StandaloneGateway]],
) -> None:
    tmp_path, built = assembled
    secret = "a-secret-that-is-long-enough-for-hs256!!"
    (tmp_path / "jwt.secret").write_text(secret + "\n")
    config = _config(tmp_path, '[jwt]\nalgorithms = ["HS256"]\nsecret_file = "jwt.secret"\n')
    gateway = _build(built, config, {})
    gateway.store.memberships.set_role(TEAM, "ada", Role.MEMBER)
    token = mint_jwt(secret_or_private_key=secret, sub="ada")
    response = TestApp(gateway.app).get(
        "/r/containers", headers={"Authorization": f"Bearer {token}", "X-Team-ID": str(TEAM)}
    )
    assert response.status_int == 200


@pytest.mark.parametrize(
    ("jwt_table", "environ", "fragment"),
    [
        pytest.param('secret_env = "JWT_SECRET"', {}, "JWT_SECRET", id="secret-env-unset"),
        pytest.param('secret_file = "missing.secret"', {}, "secret_file", id="secret-file-missing"),
        pytest.param('secret_env = "JWT_SECRET"', {"JWT_SECRET": "short"}, "[jwt]",
                     id="secret-too-short"),
    ],
)  # fmt: skip
def test_an_unusable_jwt_key_is_a_config_error_naming_the_file(
    tmp_path: Path, jwt_table: str, environ: dict[str, str], fragment: str
) -> None:
    config = _config(tmp_path, f'[jwt]\nalgorithms = ["HS256"]\n{jwt_table}\n')
    with pytest.raises(ConfigError) as error:
        build_gateway(load_config(config), environ)
    assert str(config) in str(error.value)
    assert fragment in str(error.value)


def test_the_starter_config_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.prefix == ""
    assert config.jwt is None
    assert config.secrets == {}
    assert config.describe_database() == f"sqlite:///{tmp_path.resolve()}/invoke-middleware.sqlite3"
