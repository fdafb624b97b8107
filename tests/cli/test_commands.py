"""The management commands of ``invoke-middleware``, run as the real console script: what
they print where, what they store, and a one-line error with the right exit status for every
kind of bad input."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import COMMAND_TIMEOUT, Workspace
from tests.toolkit.servers import refused_port

KEY_LINE = re.compile(r"(sk|dk)-[A-Za-z0-9_-]{43}\n")
TEAM = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Exit ``status``, nothing on stdout, one line on stderr, no traceback."""
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("invoke-middleware")
    return lines[0]


# -- init ----------------------------------------------------------------------------------


def test_init_writes_a_config_that_names_a_store_next_to_it(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    result = space.run("init")
    assert result.stdout == ""
    text = space.config.read_text()
    assert 'database = "invoke-middleware.sqlite3"' in text
    assert 'host = "127.0.0.1"' in text
    assert "port = 8080" in text
    assert "# [jwt]" in text
    assert "[secrets]" in text
    assert (tmp_path / "invoke-middleware.sqlite3").is_file()


def test_init_refuses_to_overwrite_a_config_without_force(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    space.run("init")
    space.config.write_text(space.config.read_text() + "# local edit\n")
    line = assert_one_line_error(space.run("init", check=False), 1)
    assert "already exists" in line
    assert "--force" in line
    assert space.config.read_text().endswith("# local edit\n")

    space.run("init", "--force")
    assert "# local edit" not in space.config.read_text()


def test_the_store_works_from_any_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "conf" / "gateway.toml"
    space = Workspace(tmp_path / "elsewhere")
    space.run("--config", str(config), "init")
    assert (tmp_path / "conf" / "invoke-middleware.sqlite3").is_file()
    space.run("--config", str(config), "members", "set", "--team", TEAM, "--user", "ada", "admin")
    space.env["INVOKE_MIDDLEWARE_CONFIG"] = str(config)
    listed = space.run("members", "list", "--team", TEAM)
    assert listed.stdout.splitlines()[1].split() == ["ada", "admin"]


def test_the_module_runs_like_the_console_script(workspace: Workspace) -> None:
    workspace.run("members", "set", "--team", TEAM, "--user", "ada", "owner")
    result = subprocess.run(
        [sys.executable, "-m", "invoke_middleware.cli", "members", "list", "--team", TEAM],
        cwd=workspace.path,
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == workspace.run("members", "list", "--team", TEAM).stdout


# -- services ------------------------------------------------------------------------------


def test_services_are_added_listed_shown_changed_and_removed(workspace: Workspace) -> None:
    team = str(workspace.team)
    workspace.run(
        "services", "add", "hello", "--team", team, "--name", "Hello world",
        "--upstream", "http://127.0.0.1:9000/base", "--usage-prompt", "Says hello.",
        "--openapi-url", "/openapi.json",
    )  # fmt: skip
    workspace.run(
        "services", "add", "billing", "--team", team, "--name", "Billing",
        "--external-url", "https://billing.example/v2", "--credential-ref", "billing-api",
        "--status", "stopped",
    )  # fmt: skip

    listed = workspace.run("services", "list", "--team", team).stdout.splitlines()
    assert listed[0].split() == ["SLUG", "TYPE", "STATUS", "NAME"]
    assert listed[1].split() == ["billing", "external", "stopped", "Billing"]
    assert listed[2].split() == ["hello", "deployed", "running", "Hello", "world"]

    shown = dict(
        line.split(":", 1) for line in workspace.run("services", "show", "hello", "--team", team)
        .stdout.splitlines()
    )  # fmt: skip
    shown = {key: value.strip() for key, value in shown.items()}
    assert shown["upstream"] == "http://127.0.0.1:9000/base"
    assert shown["usage_prompt"] == "Says hello."
    assert shown["openapi_url"] == "/openapi.json"
    assert shown["status"] == "running"
    external = workspace.run("services", "show", "billing", "--team", team).stdout
    assert "credential_ref: billing-api" in external

    workspace.run("services", "set-status", "hello", "failed", "--team", team)
    assert "failed" in workspace.run("services", "show", "hello", "--team", team).stdout
    workspace.run("services", "remove", "hello", "--team", team)
    assert "hello" not in workspace.run("services", "list", "--team", team).stdout


def test_an_external_service_without_a_secrets_entry_is_added_with_a_warning(
    workspace: Workspace,
) -> None:
    result = workspace.run(
        "services", "add", "billing", "--team", str(workspace.team), "--name", "Billing",
        "--external-url", "https://billing.example", "--credential-ref", "unmapped",
    )  # fmt: skip
    assert result.stdout == ""
    assert "warning" in result.stderr
    assert "[secrets]" in result.stderr


def test_a_secret_of_other_teams_is_added_with_a_warning(workspace: Workspace) -> None:
    other = uuid.uuid4()
    workspace.config.write_text(
        workspace.config.read_text() + f'payroll = {{ env = "PAYROLL", teams = ["{other}"] }}\n'
    )
    add = (
        "services", "add", "billing", "--name", "Billing",
        "--external-url", "https://billing.example", "--credential-ref", "payroll",
    )  # fmt: skip
    result = workspace.run(*add, "--team", str(workspace.team))
    assert "warning" in result.stderr
    assert f"not for team {workspace.team}" in result.stderr
    allowed = workspace.run(*add, "--team", str(other))
    assert "warning" not in allowed.stderr


# -- credentials ---------------------------------------------------------------------------


def test_issue_prints_the_key_alone_and_list_never_shows_it(workspace: Workspace) -> None:
    team = str(workspace.team)
    issued = workspace.run(
        "credentials", "issue", "--team", team, "--kind", "integration", "--name", "ci",
        "--expires-in", "3600",
    )  # fmt: skip
    assert KEY_LINE.fullmatch(issued.stdout)
    key = issued.stdout.strip()
    assert key not in issued.stderr
    assert key[:12] in issued.stderr

    workspace.run("members", "set", "--team", team, "--user", "ada", "member")
    device = workspace.run("credentials", "issue", "--team", team, "--kind", "device",
                           "--user", "ada")  # fmt: skip
    assert KEY_LINE.fullmatch(device.stdout)
    assert device.stdout.startswith("dk-")

    listed = workspace.run("credentials", "list", "--team", team).stdout
    assert key not in listed
    assert device.stdout.strip() not in listed
    rows = [line.split() for line in listed.splitlines()]
    assert rows[0] == ["ID", "PREFIX", "KIND", "USER", "NAME", "CREATED", "EXPIRES", "REVOKED",
                       "LAST-USED"]  # fmt: skip
    assert rows[1][1:5] == [key[:12] + "…", "integration", "-", "ci"]
    assert rows[1][6] != "-"  # expires
    assert rows[1][7] == "-"  # not revoked
    assert rows[2][1:4] == [device.stdout[:12] + "…", "device", "ada"]


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param(lambda key, listed: key[:12], id="prefix"),
        pytest.param(lambda key, listed: key[:12] + "…", id="prefix-as-listed"),
        pytest.param(lambda key, listed: listed[0], id="id"),
        pytest.param(lambda key, listed: key, id="whole-key"),
    ],
)
def test_revoke_finds_the_credential_by_id_prefix_or_key(
    workspace: Workspace, reference: Callable[[str, list[str]], str]
) -> None:
    key = workspace.issue("--kind", "integration")
    row = workspace.run("credentials", "list", "--team", str(workspace.team)).stdout
    listed = row.splitlines()[1].split()
    workspace.run("credentials", "revoke", reference(key, listed))
    after = workspace.run("credentials", "list", "--team", str(workspace.team)).stdout
    assert after.splitlines()[1].split()[7] != "-"


@pytest.mark.parametrize(
    "pasted",
    [
        pytest.param(lambda key: f"Bearer {key}", id="with-its-scheme"),
        pytest.param(lambda key: key + "\r", id="with-a-carriage-return"),
    ],
)
def test_revoke_never_repeats_a_key_it_cannot_use(
    workspace: Workspace, pasted: Callable[[str], str]
) -> None:
    # A key pasted from a header or a CRLF file: the error goes to a terminal or a CI log.
    key = workspace.issue("--kind", "integration").strip()
    line = assert_one_line_error(
        workspace.run("credentials", "revoke", pasted(key), check=False), 2
    )
    assert key not in line
    assert key[12:] not in line


def test_init_hides_a_password_given_in_the_database_url_s_query(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    url = "postgresql://postgres@127.0.0.1:5432/test?password=S3cret-db-pw&sslmode=disable"
    result = space.run("init", "--database", url)
    assert "S3cret-db-pw" not in result.stderr + result.stdout
    assert "password=hidden" in result.stderr
    assert "sslmode=disable" in result.stderr  # what is not secret still shows


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["services", "list", "--team", TEAM], id="services-list"),
        pytest.param(["services", "show", "hello", "--team", TEAM], id="services-show"),
        pytest.param(["credentials", "list", "--team", TEAM], id="credentials-list"),
        pytest.param(["serve", "--port", "0"], id="serve"),
    ],
)
def test_a_store_without_its_tables_is_an_error_that_says_to_run_init(
    tmp_path: Path, command: list[str]
) -> None:
    space = Workspace(tmp_path)
    space.run("init")
    store = tmp_path / "invoke-middleware.sqlite3"
    for leftover in tmp_path.glob("invoke-middleware.sqlite3*"):
        leftover.unlink()
    store.touch(mode=0o600)  # a store file made by hand, or another database

    line = assert_one_line_error(space.run(*command, check=False), 1)

    assert "init" in line, line


def test_set_limits_on_a_service_removed_meanwhile_says_nothing_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another operator removed the service between the look-up and the write.
    from invoke_middleware import cli

    space = Workspace(tmp_path)
    space.run("init")
    space.run("services", "add", "svc", "--team", TEAM, "--name", "Svc",
              "--upstream", "http://127.0.0.1:9000")  # fmt: skip
    find = cli._find_service

    def found_then_removed(context: Any, team: uuid.UUID, slug: str) -> Any:
        service = find(context, team, slug)
        context.store.services.remove(team, slug)
        return service

    monkeypatch.setattr(cli, "_find_service", found_then_removed)
    status = cli.main(["--config", str(space.config), "services", "set-limits", "svc",
                       "--team", TEAM, "--rate", "10/second"])  # fmt: skip

    assert status == 1
    assert "has no service 'svc'" in capsys.readouterr().err


# -- bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A store with the service ``hello``, the member ``ada`` and one credential."""
    space = Workspace(tmp_path_factory.mktemp("populated"), team=uuid.UUID(TEAM))
    space.run("init")
    space.run("services", "add", "hello", "--team", TEAM, "--name", "Hello",
              "--upstream", "http://127.0.0.1:9000")  # fmt: skip
    space.run("members", "set", "--team", TEAM, "--user", "ada", "member")
    space.issue("--kind", "integration")
    return space


UNKNOWN_TEAM = "00000000-0000-4000-8000-000000000000"
USAGE, FAILURE = 2, 1


def _add(slug: str, *extra: str) -> list[str]:
    return ["services", "add", slug, "--team", TEAM, "--name", "x", *extra]


def _issue(*extra: str) -> list[str]:
    return ["credentials", "issue", "--team", TEAM, *extra]


# fmt: off
BAD_COMMANDS = [
    pytest.param([], USAGE, "COMMAND", id="no-command"),
    pytest.param(["services"], USAGE, "ACTION", id="no-action"),
    pytest.param(["launch"], USAGE, "invalid choice", id="unknown-command"),
    pytest.param(["services", "list", "--team", "team-1"], USAGE, "not a team UUID",
                 id="invalid-team-uuid"),
    pytest.param(["services", "list", "--team", "6F1D2C3B4A5E4F608A7B9C0D1E2F3A4B"], USAGE,
                 "not a team UUID", id="team-uuid-not-canonical"),
    pytest.param(["services", "list", "--team", UNKNOWN_TEAM], FAILURE, "unknown team",
                 id="unknown-team-services"),
    pytest.param(["members", "list", "--team", UNKNOWN_TEAM], FAILURE, "unknown team",
                 id="unknown-team-members"),
    pytest.param(["credentials", "list", "--team", UNKNOWN_TEAM], FAILURE, "unknown team",
                 id="unknown-team-credentials"),
    pytest.param(_add("hello", "--upstream", "http://127.0.0.1:9001"), FAILURE,
                 "already has a service", id="duplicate-slug"),
    pytest.param(_add("Hello_World", "--upstream", "http://127.0.0.1:9000"), USAGE,
                 "invalid slug", id="invalid-slug"),
    pytest.param(_add("ab", "--upstream", "http://127.0.0.1:9000"), USAGE, "invalid slug",
                 id="slug-too-short"),
    pytest.param(_add("ext", "--external-url", "http://api.example"), USAGE, "https://",
                 id="external-url-not-https"),
    pytest.param(_add("ext", "--external-url", "https://user:pw@api.example"), USAGE,
                 "credentials", id="external-url-with-userinfo"),
    pytest.param(_add("web", "--upstream", "ftp://files.example"), USAGE, "https:// URL",
                 id="upstream-not-http"),
    pytest.param(_add("web", "--upstream", "127.0.0.1:9000"), USAGE, "https:// URL",
                 id="upstream-without-scheme"),
    pytest.param(_add("web", "--upstream", "http://127.0.0.1:99999"), USAGE, "invalid port",
                 id="upstream-bad-port"),
    pytest.param(_add("web", "--upstream", "http://a..b"), USAGE, "invalid host name",
                 id="upstream-empty-label"),
    pytest.param(_add("web"), USAGE, "--upstream", id="no-target"),
    pytest.param(_add("web", "--upstream", "http://a.example", "--external-url",
                      "https://b.example"), USAGE, "not allowed with", id="both-targets"),
    pytest.param(_add("web", "--upstream", "http://a.example", "--credential-ref", "ref"),
                 USAGE, "external services", id="credential-ref-on-deployed"),
    pytest.param(_add("web", "--upstream", "http://a.example", "--status", "paused"), USAGE,
                 "invalid choice", id="unknown-status-on-add"),
    pytest.param(_add("web", "--upstream", "http://a.example", "--openapi-url", "openapi.json"),
                 USAGE, "begins with /", id="openapi-url-not-a-path"),
    pytest.param(["services", "add", "web", "--team", TEAM, "--name", " ",
                  "--upstream", "http://a.example"], USAGE, "non-empty", id="blank-name"),
    pytest.param(["services", "set-status", "hello", "paused", "--team", TEAM], USAGE,
                 "invalid choice", id="unknown-status"),
    pytest.param(["services", "show", "nope", "--team", TEAM], FAILURE, "has no service",
                 id="show-unknown-service"),
    pytest.param(["services", "set-status", "nope", "stopped", "--team", TEAM], FAILURE,
                 "has no service", id="set-status-unknown-service"),
    pytest.param(["services", "remove", "nope", "--team", TEAM], FAILURE, "has no service",
                 id="remove-unknown-service"),
    pytest.param(["members", "set", "--team", TEAM, "--user", "ada", "boss"], USAGE,
                 "invalid choice", id="unknown-role"),
    pytest.param(["members", "set", "--team", TEAM, "--user", "", "member"], USAGE,
                 "non-empty", id="empty-user"),
    pytest.param(["members", "remove", "--team", TEAM, "--user", "bob"], FAILURE,
                 "not a member", id="remove-non-member"),
    pytest.param(_issue("--kind", "agent"), USAGE, "invalid choice",
                 id="agent-keys-are-not-issued"),
    pytest.param(_issue("--kind", "device"), USAGE, "--user", id="device-without-user"),
    pytest.param(_issue("--kind", "integration", "--user", "ada"), USAGE, "--user",
                 id="integration-with-user"),
    pytest.param(_issue("--kind", "device", "--user", "bob"), FAILURE, "not a member",
                 id="device-for-non-member"),
    pytest.param(_issue("--kind", "integration", "--expires-in", "0"), USAGE, "integer from 1",
                 id="expires-in-zero"),
    # Past what a date can hold: a traceback (OverflowError) before.
    pytest.param(_issue("--kind", "integration", "--expires-in", str(10**14)), USAGE,
                 "from 1 to 315360000", id="expires-in-huge"),
    pytest.param(["services", "set-limits", "hello", "--team", TEAM, "--max-in-flight",
                  str(2**31)], USAGE, "from 1 to 2147483647", id="max-in-flight-huge"),
    pytest.param(["teams", "set-limits", "--team", TEAM, "--rate", f"{10**20}/second"], USAGE,
                 "at most 2147483647", id="rate-huge"),
    pytest.param(["credentials", "revoke", "2b1e9f0c-0d5e-4c8a-9a51-3f0f2a7c9e11"], FAILURE,
                 "no credential with id", id="revoke-unknown-id"),
    pytest.param(["credentials", "revoke", "sk-AAAAAAAAAAAA"], FAILURE,
                 "no credential with prefix", id="revoke-unknown-prefix"),
    pytest.param(["credentials", "revoke", "hello"], USAGE, "not a credential id or prefix",
                 id="revoke-garbage"),
    pytest.param(["serve", "--port", "70000"], USAGE, "from 0 to 65535", id="serve-bad-port"),
    pytest.param(["serve", "--threads", "0"], USAGE, "integer >= 1", id="serve-no-threads"),
]
# fmt: on


@pytest.mark.parametrize(("args", "status", "fragment"), BAD_COMMANDS)
def test_bad_input_is_one_line_on_stderr_and_a_nonzero_exit(
    populated: Workspace, args: list[str], status: int, fragment: str
) -> None:
    line = assert_one_line_error(populated.run(*args, check=False), status)
    assert fragment in line


WRITES = {
    ("services", "add"), ("services", "set-status"), ("services", "remove"),
    ("members", "set"), ("members", "remove"), ("credentials", "issue"),
    ("credentials", "revoke"),
}  # fmt: skip


def test_refused_writes_change_nothing(populated: Workspace) -> None:
    listings = (["services", "list"], ["members", "list"], ["credentials", "list"])
    before = [populated.run(*command, "--team", TEAM).stdout for command in listings]
    for param in BAD_COMMANDS:
        args = param.values[0]
        assert isinstance(args, list)
        if tuple(args[:2]) in WRITES:
            assert populated.run(*args, check=False).returncode != 0
    after = [populated.run(*command, "--team", TEAM).stdout for command in listings]
    assert after == before


# -- bad configuration ---------------------------------------------------------------------


def _rewrite(space: Workspace, old: str, new: str) -> None:
    text = space.config.read_text()
    assert old in text
    space.config.write_text(text.replace(old, new, 1))


# fmt: off
BAD_CONFIGS = [
    pytest.param("port = 8080", "prt = 8080", "[server] prt", id="unknown-key"),
    pytest.param("[server]", "[servr]", "[servr]", id="unknown-table"),
    pytest.param("port = 8080", 'port = "8080"', "[server] port", id="port-as-string"),
    pytest.param("port = 8080", "port = 80800", "[server] port", id="port-out-of-range"),
    pytest.param("threads = 8", "threads = 0", "[server] threads", id="no-threads"),
    pytest.param("threads = 8", "threads = true", "[server] threads", id="threads-as-bool"),
    pytest.param('prefix = ""', 'prefix = "api"', "[gateway] prefix", id="relative-prefix"),
    pytest.param("# max_invoke_body_bytes = 10485760", "max_invoke_body_bytes = -1",
                 "[gateway] max_invoke_body_bytes", id="negative-limit"),
    pytest.param("# connect_timeout = 5.0", "connect_timeout = 0",
                 "[gateway] connect_timeout", id="zero-timeout"),
    pytest.param("service_cache_ttl = 2.0", "service_cache_ttl = -1",
                 "[store] service_cache_ttl", id="negative-ttl"),
    pytest.param('database = "invoke-middleware.sqlite3"', 'database = "mysql://db/x"',
                 "[store] database", id="unsupported-database"),
    pytest.param("# billing-api =", 'billing-api = "not a name"\n#', "[secrets] billing-api",
                 id="secret-not-an-env-name"),
    pytest.param("# [jwt]", '[jwt]\nsecret_env = "S"\n#', "[jwt] algorithms",
                 id="jwt-without-algorithms"),
    pytest.param("# [jwt]", '[jwt]\nalgorithms = ["HS256"]\nsecret_env = "S"\n'
                 'jwks_url = "https://idp.example/jwks"\n#', "exactly one",
                 id="jwt-two-key-sources"),
    pytest.param("# [jwt]", '[jwt]\nalgorithms = ["HS256"]\n#', "exactly one",
                 id="jwt-no-key-source"),
    pytest.param("# [jwt]", '[jwt]\nalgorithms = "HS256"\nsecret_env = "S"\n#',
                 "[jwt] algorithms", id="jwt-algorithms-not-a-list"),
    pytest.param("# [jwt]", '[jwt]\nalgorithms = ["HS256"]\njwks_url = "ftp://x"\n#',
                 "[jwt] jwks_url", id="jwt-jwks-url-not-http"),
    pytest.param("[store]", "[store", "not valid TOML", id="invalid-toml"),
]
# fmt: on


@pytest.mark.parametrize(("old", "new", "fragment"), BAD_CONFIGS)
def test_a_bad_config_is_named_in_one_line(
    workspace: Workspace, old: str, new: str, fragment: str
) -> None:
    _rewrite(workspace, old, new)
    line = assert_one_line_error(workspace.run("members", "list", "--team", TEAM, check=False), 2)
    assert str(workspace.config.name) in line
    assert fragment in line


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgres ql://user:s3cret@db/x", id="unparsable"),
        pytest.param("postgresql://user:s3cret@db:notaport/x", id="bad-port"),
    ],
)
def test_a_bad_database_url_is_one_line_without_its_password(
    workspace: Workspace, url: str
) -> None:
    _rewrite(workspace, 'database = "invoke-middleware.sqlite3"', f'database = "{url}"')
    result = workspace.run("serve", "--port", "0", check=False)
    line = assert_one_line_error(result, 2)
    assert "[store] database" in line
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["serve", "--port", "0"], id="serve"),
        pytest.param(["services", "list", "--team", TEAM], id="services-list"),
    ],
)
def test_a_database_driver_that_is_not_installed_is_one_line(
    workspace: Workspace, command: list[str]
) -> None:
    url = "postgresql+pg8000://user:s3cret@127.0.0.1/test"  # pg8000 is no dependency
    _rewrite(workspace, 'database = "invoke-middleware.sqlite3"', f'database = "{url}"')
    result = workspace.run(*command, check=False)
    line = assert_one_line_error(result, 2)
    assert "[store] database: the database driver is missing (No module named pg8000)" in line
    assert "s3cret" not in result.stdout + result.stderr


def test_init_with_a_database_driver_that_is_not_installed_is_one_line(tmp_path: Path) -> None:
    result = Workspace(tmp_path).run(
        "init", "--database", "postgresql+pg8000://user:s3cret@127.0.0.1/test", check=False
    )
    line = assert_one_line_error(result, 2)
    assert "--database: the database driver is missing (No module named pg8000)" in line


def test_serve_refuses_a_bad_config_before_listening(workspace: Workspace) -> None:
    _rewrite(workspace, "threads = 8", "threads = 0")
    line = assert_one_line_error(workspace.run("serve", "--port", "0", check=False), 2)
    assert "[server] threads" in line


@pytest.mark.parametrize(
    "make_path",
    [
        pytest.param(lambda tmp: tmp / "missing.toml", id="missing"),
        pytest.param(lambda tmp: tmp, id="a-directory"),
    ],
)
def test_an_unreadable_config_is_one_line(
    tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    space = Workspace(tmp_path)
    config = make_path(tmp_path)
    line = assert_one_line_error(
        space.run("--config", str(config), "services", "list", "--team", TEAM, check=False), USAGE
    )
    assert str(config) in line


def test_a_missing_store_is_reported_with_a_hint(workspace: Workspace) -> None:
    (workspace.path / "invoke-middleware.sqlite3").unlink()
    line = assert_one_line_error(workspace.run("members", "list", "--team", TEAM, check=False), 1)
    assert "does not exist" in line
    assert "init" in line
    assert not (workspace.path / "invoke-middleware.sqlite3").exists()


@pytest.mark.parametrize(
    "command",
    [("services", "list"), ("services", "show", "svc"), ("members", "list")],
    ids=" ".join,
)
def test_a_store_that_refuses_connections_is_one_line(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    with refused_port() as port:
        database = 'database = "invoke-middleware.sqlite3"'
        _rewrite(workspace, database, f'database = "postgresql://gateway@127.0.0.1:{port}/x"')
        line = assert_one_line_error(workspace.run(*command, "--team", TEAM, check=False), 1)
    assert "store error" in line
    assert "Connection refused" in line


def test_serve_without_the_jwt_secret_in_the_environment_is_one_line(
    workspace: Workspace,
) -> None:
    _rewrite(workspace, "# [jwt]", '[jwt]\nalgorithms = ["HS256"]\nsecret_env = "UNSET_SECRET"\n#')
    workspace.env.pop("UNSET_SECRET", None)
    line = assert_one_line_error(workspace.run("serve", "--port", "0", check=False), USAGE)
    assert "UNSET_SECRET" in line


def test_serve_with_an_unsuitable_jwt_key_is_one_line(workspace: Workspace) -> None:
    (workspace.path / "public.pem").write_text("not a key\n")
    _rewrite(
        workspace, "# [jwt]", '[jwt]\nalgorithms = ["RS256"]\npublic_key_file = "public.pem"\n#'
    )
    line = assert_one_line_error(workspace.run("serve", "--port", "0", check=False), USAGE)
    assert "[jwt]" in line


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line(workspace: Workspace, occupied_port: int) -> None:
    result = workspace.run("serve", "--host", "127.0.0.1", "--port", str(occupied_port),
                           check=False)  # fmt: skip
    line = assert_one_line_error(result, FAILURE)
    assert f"cannot listen on 127.0.0.1:{occupied_port}" in line
