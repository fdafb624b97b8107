"""The standalone gateway's parts, in process: the host app, the environment secret
resolver, and the assembly from a configuration file (JWT keys, secrets of external
services)."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
from webtest import TestApp

from invoke_middleware._toml_config import ConfigError, SecretEntry, load_config, starter_config
from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.config import JWTSettings
from invoke_middleware.pipeline import PipelineSettings
from invoke_middleware.readiness import ReadinessCheck
from invoke_middleware.registry import Service, ServiceStatus, ServiceType
from invoke_middleware.standalone import (
    EnvironmentSecretResolver,
    StandaloneApp,
    StandaloneHost,
    build_standalone_app,
    host_app,
)
from invoke_middleware.testing import (
    MockTransport,
    RecordingTransport,
    generate_keypair,
    make_response,
    mint_jwt,
)
from invoke_middleware.transport.base import (
    DEFAULT_TIMEOUTS,
    Timeouts,
)
from tests.toolkit.world import make_external_service

TEAM = uuid.UUID("2c9f7a30-1b4e-4d6a-8f2c-5e7d9b0a1c3e")
OTHER_TEAM = uuid.UUID("2c9f7a30-1b4e-4d6a-8f2c-000000000002")


def external(slug: str, reference: str, team: uuid.UUID = TEAM) -> Service:
    """An external service of ``team`` whose Authorization comes from ``reference``."""
    return make_external_service(
        slug, f"https://{slug}.example/v1", team=team, credential_id=reference
    )


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


def _metrics_host(token: str | None = None) -> TestApp:
    host = StandaloneHost(
        ReadinessCheck({}),
        metrics=lambda: (b"invoke_relays_total 7.0\n", "text/plain"),
        metrics_token=token,
    )
    return TestApp(host)


@pytest.mark.parametrize(
    ("client", "status"),
    [
        pytest.param("127.0.0.1", 200, id="ipv4-loopback"),
        pytest.param("127.8.9.10", 200, id="ipv4-loopback-net"),
        pytest.param("::1", 200, id="ipv6-loopback"),
        pytest.param("::ffff:127.0.0.1", 200, id="ipv4-mapped-loopback"),
        pytest.param("10.0.0.5", 403, id="private-network"),
        pytest.param("::ffff:10.0.0.5", 403, id="ipv4-mapped-private"),
        pytest.param("2001:db8::1", 403, id="ipv6"),
        pytest.param("", 403, id="unknown"),
    ],
)
def test_metrics_without_a_token_answer_loopback_clients_only(client: str, status: int) -> None:
    # Every team's traffic is in them, and tenants reach the same listener.
    response = _metrics_host().get(
        "/metrics", extra_environ={"REMOTE_ADDR": client}, expect_errors=True
    )
    assert response.status_int == status
    assert (b"invoke_relays_total" in response.body) is (status == 200)


@pytest.mark.parametrize("field", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_metrics_without_a_token_refuse_a_request_a_proxy_relayed(field: str) -> None:
    # A proxy on the host relays every tenant's request from loopback: /metrics answered them
    # all, every team's traffic in it.
    response = _metrics_host().get(
        "/metrics",
        headers={field: "203.0.113.9"},
        extra_environ={"REMOTE_ADDR": "127.0.0.1"},
        expect_errors=True,
    )
    assert response.status_int == 403
    assert b"invoke_relays_total" not in response.body


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param("Bearer " + "t" * 32, 200, id="the-token"),
        pytest.param(None, 401, id="none"),
        pytest.param("Bearer " + "u" * 32, 401, id="another-token"),
        pytest.param("bearer " + "t" * 32, 401, id="scheme-case"),
        pytest.param("Bearer " + "t" * 31, 401, id="a-prefix-of-it"),
        pytest.param("Bearer " + "t" * 32 + "x", 401, id="longer"),
        pytest.param("Basic dDp0", 401, id="basic"),
    ],
)
def test_metrics_with_a_token_ask_every_client_for_it(
    authorization: str | None, status: int
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = _metrics_host("t" * 32).get(
        "/metrics", headers=headers, extra_environ={"REMOTE_ADDR": "127.0.0.1"}, expect_errors=True
    )
    assert response.status_int == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"invoke_relays_total" not in response.body


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


def test_a_secret_for_some_teams_goes_to_their_services_only() -> None:
    environ = {"PAYROLL_AUTH": "Bearer payroll", "SHARED_AUTH": "Bearer shared"}
    resolver = EnvironmentSecretResolver(
        {
            "payroll": SecretEntry(env="PAYROLL_AUTH", teams=frozenset({TEAM})),
            "shared": "SHARED_AUTH",
        },
        environ,
    )
    assert resolver.secret_for(external("pay", "payroll")) == "Bearer payroll"
    # The same reference on another team's service: never the secret.
    assert resolver.secret_for(external("pay", "payroll", team=OTHER_TEAM)) is None
    # Without a service, the team is unknown: only the entries open to every team answer.
    assert resolver("payroll") is None
    assert resolver("shared") == "Bearer shared"
    assert resolver.secret_for(external("any", "shared", team=OTHER_TEAM)) == "Bearer shared"


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_the_secret_resolver_drops_a_line_break_at_the_end(end: str) -> None:
    # A secret mounted from a file often ends with one; sent as is, no request could go.
    resolver = EnvironmentSecretResolver({"billing": "BILLING_AUTH"}, {"BILLING_AUTH": "B x" + end})
    assert resolver("billing") == "B x"


# -- build_standalone_app --------------------------------------------------------------


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(starter_config() + extra)
    return path


@pytest.fixture
def assembled(tmp_path: Path) -> Iterator[tuple[Path, list[StandaloneApp]]]:
    """A place for configs, and every gateway built from them closed afterwards."""
    built: list[StandaloneApp] = []
    yield tmp_path, built
    for gateway in built:
        gateway.close()


def _build(built: list[StandaloneApp], path: Path, environ: dict[str, str]) -> StandaloneApp:
    gateway = build_standalone_app(load_config(path), environ)
    built.append(gateway)
    gateway.store.init()
    return gateway


def test_an_external_service_gets_its_secret_from_the_environment(
    assembled: tuple[Path, list[StandaloneApp]],
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
    key = gateway.store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    recorder = RecordingTransport(MockTransport(lambda request: make_response(200, body=b"{}")))
    # Only the egress (external) transport is replaced: nothing leaves the machine.
    gateway.app.pipeline.egress_transport = recorder
    response = TestApp(gateway.app).get(
        "/r/containers/billing/invoices",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_int == 200
    [sent] = recorder.requests
    assert sent.url == "https://billing.example/v1/invoices"
    assert dict(sent.headers)["Authorization"] == "Bearer upstream-secret"


def test_a_team_s_secret_is_never_sent_for_another_team_s_service(
    assembled: tuple[Path, list[StandaloneApp]],
) -> None:
    tmp_path, built = assembled
    config = _config(tmp_path, f'payroll = {{ env = "PAYROLL_AUTH", teams = ["{TEAM}"] }}\n')
    gateway = _build(built, config, {"PAYROLL_AUTH": "Bearer team-secret"})
    gateway.store.services.add(external("payroll", "payroll"))
    # Another team's service names the same reference (a copied record, a guessed name).
    gateway.store.services.add(external("copycat", "payroll", team=OTHER_TEAM))
    recorder = RecordingTransport(MockTransport(lambda request: make_response(200, body=b"{}")))
    gateway.app.pipeline.egress_transport = recorder
    app = TestApp(gateway.app)
    mine = gateway.store.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    theirs = gateway.store.credentials.issue(CredentialKind.INTEGRATION, team_id=OTHER_TEAM).key

    refused = app.get(
        "/r/containers/copycat/x", headers={"Authorization": f"Bearer {theirs}"}, status=502
    )
    assert refused.json["code"] == "upstream_error"
    assert recorder.requests == []  # nothing left for the other team's service
    app.get("/r/containers/payroll/x", headers={"Authorization": f"Bearer {mine}"}, status=200)
    [sent] = recorder.requests
    assert dict(sent.headers)["Authorization"] == "Bearer team-secret"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param('{ teams = ["x"] }', "expected an environment variable name", id="no-env"),
        pytest.param('{ env = "A", team = [] }', "expected an environment variable", id="unknown"),
        pytest.param('{ env = "A", teams = [] }', "at least one", id="no-teams"),
        pytest.param('{ env = "A", teams = "x" }', "a list of team ids", id="not-a-list"),
        pytest.param('{ env = "A", teams = ["nope"] }', "UUIDs", id="not-a-uuid"),
        pytest.param('{ env = "not a name", teams = ["x"] }', "environment variable", id="env"),
        pytest.param("42", "expected an environment variable name", id="a-number"),
    ],
)
def test_a_bad_secrets_entry_is_a_config_error_naming_it(
    tmp_path: Path, entry: str, fragment: str
) -> None:
    config = _config(tmp_path, f"payroll = {entry}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert "[secrets] payroll" in str(error.value)
    assert fragment in str(error.value)


def test_a_public_key_file_verifies_user_jwts(
    assembled: tuple[Path, list[StandaloneApp]],
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
    assembled: tuple[Path, list[StandaloneApp]],
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
        build_standalone_app(load_config(config), environ)
    assert str(config) in str(error.value)
    assert fragment in str(error.value)


def test_the_starter_config_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.prefix == ""
    assert not config.gateway.uses_jwt
    assert config.secrets == {}
    assert config.describe_database() == f"sqlite:///{tmp_path.resolve()}/invoke-middleware.sqlite3"


# -- the [gateway] and [jwt] tables are the integrations' settings ----------------------------


def test_every_commented_gateway_setting_of_the_starter_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(certifi.where(), tmp_path / "ca.pem")
    lines = starter_config().splitlines()
    start, end = lines.index("[gateway]"), lines.index("# [jwt]")
    uncommented = [
        re.sub(r"^# ", "", line) if re.match(r"# [a-z_]+ = ", line) else line
        for line in lines[start:end]
    ]
    assert len([line for line in uncommented if not line.startswith("#")]) > 10
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join([*lines[:start], *uncommented, *lines[end:]]))

    config = load_config(path).gateway.resolve({})

    # The example origin is the one value the starter shows that is not a default.
    assert config.settings == PipelineSettings(mcp_allowed_origins=("https://app.example",))
    assert config.ca_bundle == str(tmp_path / "ca.pem")


def test_the_gateway_table_takes_the_settings_of_the_integrations(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_text(
        starter_config().replace(
            'prefix = ""\n',
            'prefix = "/api"\nmax_header_count = 7\nmax_header_bytes = 4096\n'
            'pseudonym = "edge-1"\ntotal_timeout = "none"\nread_timeout = 2.5\n'
            "trusted_proxy_hops = 1\nproblem_json = true\nscope_cookies = false\n"
            "sandbox_pages = true\n",
        )
    )

    resolved = load_config(config).gateway.resolve({})

    assert resolved.prefix == "/api"
    assert resolved.settings == PipelineSettings(
        max_header_count=7,
        max_header_bytes=4096,
        pseudonym="edge-1",
        timeouts=Timeouts(connect=DEFAULT_TIMEOUTS.connect, read=2.5, total=None),
        trusted_proxy_hops=1,
        problem_json=True,
        scope_cookies=False,
        sandbox_pages=True,
    )


def test_a_header_cap_from_the_file_applies_to_requests(
    assembled: tuple[Path, list[StandaloneApp]],
) -> None:
    tmp_path, built = assembled
    config = _config(tmp_path)
    config.write_text(
        starter_config().replace('prefix = ""\n', 'prefix = ""\nmax_header_count = 3\n')
    )
    app = TestApp(_build(built, config, {}).app)
    few = app.get("/r/containers", expect_errors=True)
    many = app.get(
        "/r/containers", headers={f"X-Extra-{n}": "1" for n in range(5)}, expect_errors=True
    )
    assert few.status_int == 401
    assert many.status_int == 431


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        pytest.param("gateway", "read_timeout = 0",
                     "[gateway] read_timeout: expected seconds (more than 0, at most 86400), got 0",
                     id="zero-seconds"),
        pytest.param("gateway", 'max_header_count = "100"',
                     "[gateway] max_header_count: expected a positive integer, got '100'",
                     id="string-for-integer"),
        pytest.param("gateway", 'problem_json = "yes"',
                     "[gateway] problem_json: expected true or false, got 'yes'",
                     id="string-for-boolean"),
        pytest.param("gateway", 'total_timeout = "never"', "[gateway] total_timeout: expected",
                     id="total-timeout-word"),
        pytest.param("gateway", 'pseudonym = "edge one"', "[gateway] pseudonym: expected",
                     id="pseudonym-not-a-token"),
        pytest.param("gateway", 'ca_bundle = "missing.pem"',
                     "[gateway] ca_bundle: cannot read the file", id="ca-bundle-missing"),
        pytest.param("gateway", "read_timout = 5",
                     "[gateway] read_timout: unknown setting; did you mean [gateway] read_timeout?",
                     id="gateway-typo"),
        pytest.param("gateway", 'database_url = "sqlite://"', "[gateway] database_url: unknown",
                     id="store-setting-in-gateway"),
        pytest.param("server", 'metrics_token_env = "METRICS_TOKEN"',
                     "[server] metrics_token_env: applies only with metrics = true",
                     id="metrics-token-without-metrics"),
        pytest.param("server", 'metrics = true\nmetrics_token_env = "NOT A NAME"',
                     "[server] metrics_token_env: expected an environment variable name",
                     id="metrics-token-env-not-a-name"),
        pytest.param("jwt", "leway = 1",
                     "[jwt] leway: unknown setting; did you mean [jwt] leeway?", id="jwt-typo"),
        pytest.param("jwt", 'algorithms = ["HS256"]\nsecret_env = "A"\nsecret = "x"',
                     "set only one of", id="jwt-two-sources"),
        pytest.param("jwt", 'algorithms = ["none"]\nsecret_env = "A"',
                     "[jwt] algorithms: unknown or refused algorithm 'none'", id="jwt-alg-none"),
        pytest.param("jwt", 'algorithms = ["HS256"]\nsecret_env = "NOT A NAME"',
                     "[jwt] secret_env: expected an environment variable name",
                     id="jwt-secret-env-not-a-name"),
    ],
)  # fmt: skip
def test_a_bad_setting_names_the_file_and_the_key(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    text = starter_config()
    if table == "gateway":
        text = text.replace('prefix = ""\n', f'prefix = ""\n{line}\n')
    elif table == "server":
        text = text.replace("[server]\n", f"[server]\n{line}\n")
    else:
        text += f"\n[jwt]\n{line}\n"
    path = tmp_path / "gateway.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert str(error.value).startswith(f"{path}: [{table}] ")
    assert expected in str(error.value)
    assert error.value.source == str(path)


def test_the_jwt_table_takes_the_jwt_settings_of_the_integrations(tmp_path: Path) -> None:
    secret = "a-secret-that-is-long-enough-for-hs256!!"
    config = _config(
        tmp_path,
        '[jwt]\nalgorithms = ["HS256"]\nsecret_env = "GATEWAY_JWT"\n'
        'issuer = "https://idp.example"\naudience = ["gateway", "tools"]\nleeway = 5\n'
        "cache_size = 100\n",
    )

    jwt = load_config(config).gateway.resolve({"GATEWAY_JWT": secret}).jwt

    assert jwt == JWTSettings(
        algorithms=("HS256",),
        key=secret,
        key_setting="jwt.secret_env",
        issuer="https://idp.example",
        audience=("gateway", "tools"),
        leeway=5.0,
        cache_size=100,
    )


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        pytest.param(b"s" * 40 + b"\n", b"s" * 40, id="newline"),
        pytest.param(b"s" * 40 + b"\r\n", b"s" * 40, id="crlf"),
        pytest.param(b"s" * 40, b"s" * 40, id="no-newline"),
        pytest.param(b"s" * 40 + b"\n\n", b"s" * 40 + b"\n", id="only-one-newline"),
    ],
)
def test_a_secret_file_loses_one_trailing_newline(
    tmp_path: Path, content: bytes, secret: bytes
) -> None:
    (tmp_path / "jwt.secret").write_bytes(content)
    config = _config(tmp_path, '[jwt]\nalgorithms = ["HS256"]\nsecret_file = "jwt.secret"\n')

    jwt = load_config(config).gateway.resolve({}).jwt

    assert jwt is not None
    assert jwt.key == secret
