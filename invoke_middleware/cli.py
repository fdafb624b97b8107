"""The ``invoke-middleware`` command: a standalone gateway configured by one TOML file.

::

    invoke-middleware demo                       # a throwaway gateway with an example service
    invoke-middleware init                       # write invoke-middleware.toml, create the store
    invoke-middleware services add hello --team TEAM --name Hello --upstream http://127.0.0.1:9000
    invoke-middleware credentials issue --team TEAM --kind integration   # prints the key alone
    invoke-middleware teams set-limits --team TEAM --rate 600/minute --max-in-flight 4
    invoke-middleware serve                      # gunicorn (or waitress) on 127.0.0.1:8080

The configuration file is ``--config PATH``, else ``$INVOKE_MIDDLEWARE_CONFIG``, else
``./invoke-middleware.toml``. Results (lists, details, an issued key) go to standard output;
notices and errors go to standard error, an error as one line. Exit status: 0 on success,
2 when the command line or the configuration file is wrong, 1 when a well-formed command
cannot be carried out (a duplicate slug, an unknown service, team or credential, a store or
port that cannot be used). Also runnable as ``python -m invoke_middleware.cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import logging
import os
import stat
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO, TypeVar

import sqlalchemy as sa

from invoke_middleware._demo import DEMO_SLUG, demo_setup, example_service
from invoke_middleware._private_files import create_private_file, secret_files
from invoke_middleware._server import (
    WAITRESS,
    configure_logging,
    plan_server,
    run_server,
    with_caps_of,
)
from invoke_middleware._toml_config import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_STORE_NAME,
    StandaloneConfig,
    database_from_setting,
    load_config,
    shown_url,
    sqlite_file,
    starter_config,
)
from invoke_middleware.auth.keys import PREFIX_LENGTH, key_matches
from invoke_middleware.auth.principal import CredentialKind, Role
from invoke_middleware.auth.stores import CredentialRecord
from invoke_middleware.config import ConfigError
from invoke_middleware.errors import StoreUnavailableError
from invoke_middleware.limits import Rate, ServiceLimits, TeamLimits
from invoke_middleware.readiness import store_probe
from invoke_middleware.registry import (
    Service,
    ServiceStatus,
    ServiceType,
    is_valid_slug,
    validate_external_url,
    validate_upstream_url,
)
from invoke_middleware.standalone import (
    build_standalone_app,
    metrics_token,
    warn_open_metrics,
    warn_rates_per_process,
)
from invoke_middleware.store.sql import (
    LIMIT_FIELDS,
    DuplicateServiceError,
    SQLStore,
    missing_tables,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from invoke_middleware._server import Builder, ServerPlan

CONFIG_ENV = "INVOKE_MIDDLEWARE_CONFIG"
PROG = "invoke-middleware"

EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Matches the store's column (see ``store/_schema.py``).
_MAX_USER_ID_LENGTH = 255

logger = logging.getLogger("invoke_middleware.cli")


class CommandError(Exception):
    """A command cannot be carried out; ``exit_code`` says whose fault it is."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error as one line (no usage dump above it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# -- argument types: each raises ArgumentTypeError with a one-line reason ----------------


def _team(value: str) -> uuid.UUID:
    try:
        team = uuid.UUID(value)
    except ValueError:
        team = None
    if team is None or str(team) != value.lower():
        raise argparse.ArgumentTypeError(f"not a team UUID: {value!r}")
    return team


def _slug(value: str) -> str:
    if not is_valid_slug(value):
        raise argparse.ArgumentTypeError(
            f"invalid slug {value!r}: 3 to 100 lower-case letters, digits and dashes, "
            "starting and ending with a letter or digit"
        )
    return value


def _upstream(value: str) -> str:
    try:
        validate_upstream_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {value!r}") from None
    return value


def _external(value: str) -> str:
    try:
        validate_external_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {value!r}") from None
    return value


def _openapi_path(value: str) -> str:
    if not value.startswith("/") or value.startswith("//") or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(f"not a path on the service (begins with /): {value!r}")
    return value


def _text(value: str) -> str:
    if not value.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        # The value is not repeated: it may be a key pasted with a stray character.
        raise argparse.ArgumentTypeError("must be non-empty, without control characters")
    return value


def _user(value: str) -> str:
    _text(value)
    if len(value) > _MAX_USER_ID_LENGTH or value != value.strip():
        raise argparse.ArgumentTypeError(
            f"a user id is 1 to {_MAX_USER_ID_LENGTH} characters without surrounding spaces"
        )
    return value


#: The longest lifetime a key is issued with: ten years, in seconds.
_MAX_LIFETIME = 10 * 365 * 24 * 3600
#: The largest count or period the store keeps (a PostgreSQL INTEGER).
_MAX_STORED_INT = 2**31 - 1


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value!r}")
        return number

    return parse


# -- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``invoke-middleware``."""
    parser = _Parser(
        prog=PROG,
        description="A standalone invoke_middleware gateway, configured by one TOML file.",
        epilog="Exit status: 0 success, 1 the command could not be carried out, "
        "2 bad command line or configuration file.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG_NAME})",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    init = commands.add_parser("init", help="write a starter configuration and create the store")
    init.add_argument("--force", action="store_true", help="overwrite an existing configuration")
    init.add_argument(
        "--database",
        type=_text,
        default=DEFAULT_STORE_NAME,
        help="SQLite file (relative to the configuration) or SQLAlchemy URL "
        f"(default: {DEFAULT_STORE_NAME})",
    )
    init.set_defaults(handler=_init)

    serve = commands.add_parser(
        "serve", help="run the gateway (gunicorn, one process per core; or waitress)"
    )
    serve.add_argument("--host", type=_text, help="listen address (default: from the config)")
    serve.add_argument(
        "--port",
        type=_int_at_least(0, 65535),
        help="listen port, 0 for any free one (default: from the config)",
    )
    serve.add_argument(
        "--threads",
        type=_int_at_least(1),
        help="worker threads per process (default: from the config)",
    )
    serve.add_argument(
        "--workers",
        type=_int_at_least(1),
        help="processes, under gunicorn (default: from the config, else one per core)",
    )
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo",
        help="a throwaway gateway with an example service, in a temporary directory; "
        "prints a curl line to try",
    )
    demo.add_argument("--host", type=_text, help="listen address (default: 127.0.0.1)")
    demo.add_argument("--port", type=_int_at_least(0, 65535),
                      help="listen port, 0 for any free one (default: 8080)")  # fmt: skip
    demo.add_argument("--threads", type=_int_at_least(1), help="worker threads (default: 8)")
    demo.set_defaults(handler=_demo)

    _add_service_commands(commands)
    _add_member_commands(commands)
    _add_team_commands(commands)
    _add_credential_commands(commands)
    return parser


def _add_service_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    services = commands.add_parser("services", help="manage a team's services").add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    statuses = [status.value for status in ServiceStatus]

    add = services.add_parser("add", help="add a deployed (--upstream) or external service")
    add.add_argument("slug", type=_slug, metavar="SLUG")
    add.add_argument("--team", type=_team, required=True)
    add.add_argument("--name", type=_text, required=True, help="display name")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--upstream",
        type=_upstream,
        metavar="URL",
        help="deployed: the http(s) base URL the gateway relays to",
    )
    target.add_argument(
        "--external-url",
        type=_external,
        metavar="URL",
        help="external: the https:// base URL of the service",
    )
    add.add_argument(
        "--credential-ref",
        type=_text,
        metavar="REF",
        help="external only: a [secrets] reference for its Authorization header",
    )
    add.add_argument(
        "--status",
        choices=statuses,
        default=ServiceStatus.RUNNING.value,
        help="initial status (default: running)",
    )
    add.add_argument(
        "--usage-prompt",
        type=_text,
        metavar="TEXT",
        help="description for AI agents; visible to the team, never a secret",
    )
    add.add_argument(
        "--openapi-url",
        type=_openapi_path,
        metavar="PATH",
        help="path on the service that serves its OpenAPI document",
    )
    _add_limit_options(add)
    add.set_defaults(handler=_services_add)

    listing = services.add_parser("list", help="list a team's services")
    listing.add_argument("--team", type=_team, required=True)
    listing.set_defaults(handler=_services_list)

    show = services.add_parser("show", help="show one service")
    show.add_argument("slug", type=_slug, metavar="SLUG")
    show.add_argument("--team", type=_team, required=True)
    show.set_defaults(handler=_services_show)

    status = services.add_parser("set-status", help="change a service's status")
    status.add_argument("slug", type=_slug, metavar="SLUG")
    status.add_argument(
        "status", choices=statuses, metavar="STATUS", help=f"one of {', '.join(statuses)}"
    )
    status.add_argument("--team", type=_team, required=True)
    status.set_defaults(handler=_services_set_status)

    limits = services.add_parser(
        "set-limits", help="set a service's own rate and concurrency limits"
    )
    limits.add_argument("slug", type=_slug, metavar="SLUG")
    limits.add_argument("--team", type=_team, required=True)
    _add_limit_options(limits, clearable=True)
    limits.set_defaults(handler=_services_set_limits)

    remove = services.add_parser("remove", help="remove a service")
    remove.add_argument("slug", type=_slug, metavar="SLUG")
    remove.add_argument("--team", type=_team, required=True)
    remove.set_defaults(handler=_services_remove)


def _add_member_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    members = commands.add_parser("members", help="manage team members and roles").add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    roles = [role.value for role in Role]

    set_role = members.add_parser("set", help="add a member or change their role")
    set_role.add_argument("--team", type=_team, required=True)
    set_role.add_argument("--user", type=_user, required=True)
    set_role.add_argument("role", choices=roles, metavar="ROLE", help=f"one of {', '.join(roles)}")
    set_role.set_defaults(handler=_members_set)

    remove = members.add_parser("remove", help="remove a member")
    remove.add_argument("--team", type=_team, required=True)
    remove.add_argument("--user", type=_user, required=True)
    remove.set_defaults(handler=_members_remove)

    listing = members.add_parser("list", help="list a team's members")
    listing.add_argument("--team", type=_team, required=True)
    listing.set_defaults(handler=_members_list)


def _add_team_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    teams = commands.add_parser("teams", help="set a team's own limits").add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )

    limits = teams.add_parser("set-limits", help="set a team's own rate and concurrency limits")
    limits.add_argument("--team", type=_team, required=True)
    _add_limit_options(limits, clearable=True, scope="team")
    limits.set_defaults(handler=_teams_set_limits)

    listing = teams.add_parser("limits", help="list the teams that have limits of their own")
    listing.set_defaults(handler=_teams_limits)


def _add_credential_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    credentials = commands.add_parser(
        "credentials", help="issue, list and revoke sk-/dk- keys"
    ).add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)

    issue = credentials.add_parser(
        "issue", help="issue a key and print it, alone, on standard output (shown once)"
    )
    issue.add_argument("--team", type=_team, required=True)
    issue.add_argument(
        "--kind",
        choices=[CredentialKind.DEVICE.value, CredentialKind.INTEGRATION.value],
        required=True,
        help="integration (sk-, acts for the team) or device (dk-, for --user)",
    )
    issue.add_argument("--user", type=_user, help="device keys: the member the key acts for")
    issue.add_argument("--name", type=_text, help="a label shown by list")
    issue.add_argument(
        "--expires-in",
        type=_int_at_least(1, _MAX_LIFETIME),
        metavar="SECONDS",
        help=f"lifetime in seconds, at most {_MAX_LIFETIME} (ten years; default: no expiry)",
    )
    issue.set_defaults(handler=_credentials_issue)

    revoke = credentials.add_parser("revoke", help="revoke a key, for good")
    revoke.add_argument(
        "credential",
        type=_text,
        metavar="ID_OR_PREFIX",
        help="the credential's id, or its prefix as list shows it",
    )
    revoke.set_defaults(handler=_credentials_revoke)

    listing = credentials.add_parser("list", help="list a team's keys (prefixes, never keys)")
    listing.add_argument("--team", type=_team, required=True)
    listing.set_defaults(handler=_credentials_list)


# -- running a command ---------------------------------------------------------------------


class _Context:
    """What a command needs: its configuration and store (opened on first use)."""

    def __init__(self, config_path: Path, stdout: TextIO, stderr: TextIO) -> None:
        self.config_path = config_path
        self.stdout = stdout
        self.stderr = stderr
        self._config: StandaloneConfig | None = None
        self._store: SQLStore | None = None

    @property
    def config(self) -> StandaloneConfig:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise CommandError(str(exc), EXIT_USAGE) from None
        return self._config

    @property
    def store(self) -> SQLStore:
        if self._store is None:
            self._store = open_store(self.config)
        return self._store

    def notice(self, message: str) -> None:
        print(message, file=self.stderr)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def open_store(config: StandaloneConfig) -> SQLStore:
    """The configured store; a missing SQLite file is an error, not a new empty database."""
    path = sqlite_file(config.database)
    if path is not None and not path.exists():
        raise CommandError(
            f"store {path} does not exist (run `{PROG} init`, or fix [store] database "
            f"in {config.path})"
        )
    try:
        return SQLStore(config.database, service_cache_ttl=0)
    except (ValueError, sa.exc.ArgumentError) as exc:
        raise CommandError(f"{config.path}: [store] database: {exc}", EXIT_USAGE) from None
    except ImportError as exc:
        raise CommandError(
            f"{config.path}: [store] database: {_missing_driver(exc)}", EXIT_USAGE
        ) from None


def _missing_driver(exc: ImportError) -> str:
    return f"the database driver is missing (No module named {exc.name})"


_QUIET = logging.NullHandler()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``invoke-middleware`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    # A command says what went wrong in its one line: the package's log records (a store
    # found unavailable, say) reach stderr only where serve sets up the log, not through
    # logging's last-resort handler.
    logging.getLogger("invoke_middleware").addHandler(_QUIET)
    config_path = args.config or Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)
    context = _Context(config_path, sys.stdout, sys.stderr)
    handler: Callable[[argparse.Namespace, _Context], None] = args.handler
    try:
        handler(args, context)
    except CommandError as exc:
        return _fail(str(exc), exc.exit_code)
    except sa.exc.SQLAlchemyError as exc:
        # The one place the store's database errors become a message.
        return _fail(_store_error(exc), EXIT_FAILURE)
    except StoreUnavailableError as exc:
        # A read made as a request makes it: the database's own error says more.
        cause = exc.__cause__
        return _fail(
            _store_error(cause) if isinstance(cause, sa.exc.SQLAlchemyError) else exc.message,
            EXIT_FAILURE,
        )
    except OSError as exc:
        return _fail(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), EXIT_FAILURE
        )
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        context.close()
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _store_error(exc: sa.exc.SQLAlchemyError) -> str:
    detail = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
    detail = detail.strip().splitlines()[0] if detail.strip() else type(exc).__name__
    if isinstance(exc, sa.exc.NoSuchTableError):
        detail = f"no such table: {detail}"
    if "no such table" in detail or "does not exist" in detail:
        return f"store error: {detail} (run `{PROG} init` to create the tables)"
    return f"store error: {detail}"


# -- init and serve ------------------------------------------------------------------------


def _init(args: argparse.Namespace, context: _Context) -> None:
    path = context.config_path
    if path.exists() and not args.force:
        raise CommandError(f"{path} already exists (use --force to overwrite it)")
    if "://" not in args.database and not path.parent.is_dir():
        raise CommandError(f"directory {path.parent} does not exist")
    try:
        database = database_from_setting(args.database, path.resolve().parent)
        store = SQLStore(database)
    except (ValueError, sa.exc.ArgumentError) as exc:
        raise CommandError(f"--database: {exc}", EXIT_USAGE) from None
    except ImportError as exc:
        raise CommandError(f"--database: {_missing_driver(exc)}", EXIT_USAGE) from None
    store_file = sqlite_file(database, creating=True)
    if store_file is not None:
        # Before SQLite creates it: the store holds key hashes, and its -wal and -shm files
        # take the database file's mode.
        create_private_file(store_file, None)
    with store:
        store.init()
    # The configuration may hold a JWT secret.
    create_private_file(path, starter_config(args.database).encode())
    context.notice(f"wrote {path}; store ready at {shown_url(database)}")


def _serve(args: argparse.Namespace, context: _Context) -> None:
    config = context.config
    store = open_store(config)  # fails early, with the hint, when the store is missing
    answers = True
    try:
        store_probe(store)()
    except sa.exc.DBAPIError as exc:
        if missing_tables(exc):
            raise CommandError(
                f"{config.path}: [store] database has no tables (run `{PROG} init`)"
            ) from None
        # Not answering now: served all the same, and /readyz says so until it answers.
        answers = False
    finally:
        store.close()
    for path in secret_files(config):
        if path.exists() and path.stat().st_mode & 0o077:
            context.notice(
                f"warning: {path} is readable by other users (mode "
                f"{stat.S_IMODE(path.stat().st_mode):04o}); it holds secrets: chmod 600 {path}"
            )
    _run_gateway(
        config,
        host=args.host,
        port=args.port,
        threads=args.threads,
        workers=args.workers,
        store_answers=answers,
    )


def _check_gateway(
    config: StandaloneConfig,
    plan: ServerPlan,
    *,
    read_store: bool = False,
    store_answers: bool = True,
) -> None:
    """Build the gateway of ``config`` once and close it, saying at once what it would fail
    or warn about in each process (raises :class:`ConfigError` or :class:`ImportError`);
    with ``read_store``, its store must answer too (the store is opened lazily: a gateway
    builds on one that cannot be reached, and fails every request). ``store_answers=False``:
    the store was found not to answer, and is not asked again (each time would cost its
    timeout). Without metrics: prometheus_client must not be imported before the server
    chooses its multi-process mode."""
    without_metrics = dataclasses.replace(
        config, server=dataclasses.replace(config.server, metrics=False)
    )
    checked = build_standalone_app(without_metrics, threads=plan.threads)
    try:
        if read_store:
            try:
                store_probe(checked.store)()
            except Exception as exc:
                # Named, not printed: a driver's message may carry the database's address.
                raise ConfigError(
                    "[store] database", f"cannot be read ({type(exc).__name__})"
                ) from None
        warn_rates_per_process(checked, plan.workers, read_store=store_answers)
        warn_open_metrics(config, checked)
    finally:
        checked.close()


def _builder(config: StandaloneConfig, plan: ServerPlan) -> Builder:
    """What makes a process's gateway of ``config`` (and its ``close``)."""

    def build() -> tuple[WSGIApplication, Callable[[], None]]:
        # Each process serves with plan.threads threads: the fair-share default divides those.
        gateway = build_standalone_app(config, threads=plan.threads)
        return gateway.wsgi, gateway.close

    return build


def _reread(config: StandaloneConfig, plan: ServerPlan) -> tuple[Builder, ServerPlan] | None:
    """gunicorn's ``SIGHUP``, in the arbiter: the builder of the gateway of ``config``'s file
    as it is now, checked as at start, for the workers it starts next, and ``plan`` with the
    header and body caps that gateway admits; ``None`` (logged) when the file fails. The rest
    of the ``[server]`` table (the port, the processes) stays as it was: it is the running
    server's own."""
    # A reload never stops a server that serves: whatever fails is said, and that is all.
    failure: object = None
    try:
        loaded = load_config(config.path)  # its errors name the file already
        fresh = dataclasses.replace(loaded, server=config.server)
    except Exception as exc:
        failure = exc
    else:
        try:
            open_store(fresh).close()  # a missing SQLite file is refused, as at start
            _check_gateway(fresh, plan, read_store=True)
        except ConfigError as exc:
            failure = exc.located(str(config.path))
        except ImportError as exc:
            failure = f"{config.path}: [store] database: {_missing_driver(exc)}"
        except CommandError as exc:
            failure = exc
        except Exception as exc:
            failure = f"{config.path}: {exc}"
    if failure is not None:
        logger.error("SIGHUP: %s; the workers restart with the configuration they had", failure)
        return None
    if loaded.server != config.server:
        logger.warning("SIGHUP: a changed [server] table applies when serve starts again")
    logger.info("SIGHUP: read %s again; the workers restart with it", config.path)
    return _builder(fresh, plan), with_caps_of(plan, fresh)


def _demo(args: argparse.Namespace, context: _Context) -> None:
    with example_service() as upstream, demo_setup(upstream) as demo:

        def announce(base_url: str) -> None:
            context.notice(
                f"demo: the example service {DEMO_SLUG!r} of team {demo.team_id} is behind "
                f"the gateway; everything is deleted on exit (Ctrl-C). Try:"
            )
            print(demo.curl_line(base_url), file=context.stdout, flush=True)

        # One process: the example service runs in this one.
        _run_gateway(
            demo.config,
            host=args.host,
            port=args.port,
            threads=args.threads,
            engine=WAITRESS,
            announce=announce,
        )


def _run_gateway(
    config: StandaloneConfig,
    *,
    host: str | None,
    port: int | None,
    threads: int | None,
    workers: int | None = None,
    engine: str | None = None,
    announce: Callable[[str], None] | None = None,
    store_answers: bool = True,
) -> None:
    """Serve the gateway of ``config`` until SIGINT or SIGTERM (see :mod:`._server`);
    ``store_answers=False`` when the store was just found not to answer."""
    configure_logging(config.server.log_format)
    if engine is not None:
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, engine=engine)
        )
    try:
        plan = plan_server(config, host=host, port=port, threads=threads, workers=workers)
        # Checked once here so that a bad JWT key is one line before listening; each process
        # then builds its own.
        _check_gateway(config, plan, store_answers=store_answers)
        if config.server.metrics:
            metrics_token(config, os.environ)
    except ConfigError as exc:
        raise CommandError(str(exc.located(str(config.path))), EXIT_USAGE) from None
    except ImportError as exc:
        raise CommandError(
            f"{config.path}: [store] database: {_missing_driver(exc)}", EXIT_USAGE
        ) from None

    def ready(bound: list[tuple[str, int]]) -> None:
        urls = [f"http://{_authority(address)}{config.prefix}" for address in bound]
        logger.info(
            "serving on %s (store %s, %s)",
            ", ".join(urls),
            config.describe_database(),
            plan.describe(),
        )
        if announce is not None:
            announce(urls[0])

    starter = os.getpid()
    try:
        run_server(
            plan,
            _builder(config, plan),
            on_ready=ready,
            reread=functools.partial(_reread, config, plan),
            requires={"prometheus_client": "[server] metrics"} if config.server.metrics else {},
        )
    except ConfigError as exc:
        raise CommandError(str(exc.located(str(config.path))), EXIT_USAGE) from None
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {plan.host}:{plan.port}: {exc.strerror or exc}"
        ) from None
    except SystemExit as exc:
        if os.getpid() != starter:
            # A gunicorn worker ending: its status is for the arbiter, which halts on 3
            # (could not boot) instead of starting another (see run_server).
            raise
        # gunicorn's arbiter ends with sys.exit(); its status is the command's.
        if exc.code not in (0, None):
            raise CommandError(f"the server stopped with status {exc.code}") from None
    logger.info("stopped")


def _authority(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- services ------------------------------------------------------------------------------


def _require_known_team(context: _Context, team: uuid.UUID) -> None:
    store = context.store
    if store.services.list(team) or store.memberships.list(team) or store.credentials.list(team):
        return
    raise CommandError(f"unknown team {team} (it has no services, members or credentials)")


def _services_add(args: argparse.Namespace, context: _Context) -> None:
    if args.credential_ref is not None and args.external_url is None:
        raise CommandError(
            "--credential-ref applies to external services (--external-url) only", EXIT_USAGE
        )
    service = Service(
        id=uuid.uuid4(),
        team_id=args.team,
        slug=args.slug,
        display_name=args.name,
        service_type=ServiceType.EXTERNAL if args.external_url else ServiceType.DEPLOYED,
        service_status=ServiceStatus(args.status),
        upstream_url=args.upstream,
        external_url=args.external_url,
        external_auth_credential_id=args.credential_ref,
        usage_prompt=args.usage_prompt,
        openapi_url=args.openapi_url,
        limits=_limits_of(args, ServiceLimits),
    )
    if service.limits != ServiceLimits():
        context.store.init()  # adds the limit columns to a store made by an earlier release
    try:
        context.store.services.add(service)
    except DuplicateServiceError as exc:
        raise CommandError(str(exc)) from None
    context.notice(
        f"added {service.service_type.value} service {service.slug} "
        f"({service.service_status.value}) to team {service.team_id}"
    )
    if args.credential_ref is not None:
        entry = context.config.secrets.get(args.credential_ref)
        if entry is None:
            context.notice(
                f"warning: credential reference {args.credential_ref!r} has no entry in "
                f"[secrets] of {context.config.path}; requests to it will get 502"
            )
        elif not entry.allows(service.team_id):
            context.notice(
                f"warning: [secrets] {args.credential_ref} of {context.config.path} is not for "
                f"team {service.team_id}; requests to it will get 502"
            )


def _add_limit_options(
    parser: argparse.ArgumentParser, *, clearable: bool = False, scope: str = "service"
) -> None:
    unset = "; 'none' returns to the gateway's [limits] setting" if clearable else ""
    whose = {"service": "to this service from all callers", "team": "from all of this team"}
    parser.add_argument(
        "--rate",
        type=_rate_option,
        metavar="RATE",
        help=f"requests per window {whose[scope]}, e.g. 100/minute{unset}",
    )
    parser.add_argument(
        "--max-in-flight",
        type=_max_in_flight_option,
        metavar="N",
        help=f"relays {whose[scope]} in flight at once, per gateway process{unset}",
    )


#: Stands for "none" in the limit options: the gateway-wide setting applies again.
_CLEARED = "none"


def _rate_option(value: str) -> Rate | str:
    if value.strip().lower() == _CLEARED:
        return _CLEARED
    try:
        rate = Rate.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a rate: {value!r}: {exc} (e.g. 100/minute, 10 per second)"
        ) from None
    if rate.amount > _MAX_STORED_INT or rate.window > _MAX_STORED_INT:
        raise argparse.ArgumentTypeError(
            f"a rate's count and its period in seconds are at most {_MAX_STORED_INT}, got {value!r}"
        )
    return rate


def _max_in_flight_option(value: str) -> int | str:
    if value.strip().lower() == _CLEARED:
        return _CLEARED
    return _int_at_least(1, _MAX_STORED_INT)(value)


_Limits = TypeVar("_Limits", ServiceLimits, TeamLimits)


def _limits_of(args: argparse.Namespace, kind: type[_Limits]) -> _Limits:
    """The limits ``--rate`` and ``--max-in-flight`` say (``none``, or no option, leaves the
    gateway's setting)."""
    return kind(
        rate=None if args.rate == _CLEARED else args.rate,
        max_in_flight=None if args.max_in_flight == _CLEARED else args.max_in_flight,
    )


def _limits_given(args: argparse.Namespace) -> list[str]:
    """The limits the options name (their names are the store's): only these are written, so
    that a concurrent change of the others is kept."""
    return [name for name in sorted(LIMIT_FIELDS) if getattr(args, name) is not None]


def _describe_limits(limits: ServiceLimits | TeamLimits) -> str:
    rate = "gateway default" if limits.rate is None else f"{limits.rate}"
    in_flight = "gateway default" if limits.max_in_flight is None else str(limits.max_in_flight)
    return f"rate {rate}, max in flight {in_flight}"


def _services_set_limits(args: argparse.Namespace, context: _Context) -> None:
    if args.rate is None and args.max_in_flight is None:
        raise CommandError("give --rate and/or --max-in-flight", EXIT_USAGE)
    _find_service(context, args.team, args.slug)
    store = context.store
    store.init()  # adds the limit columns to a store made by an earlier release
    limits = _limits_of(args, ServiceLimits)
    stored = store.services.set_limits(args.team, args.slug, limits, fields=_limits_given(args))
    service = store.services.get(args.team, args.slug) if stored else None
    if service is None:
        # Removed since it was found: nothing was stored, and saying otherwise would mislead.
        raise CommandError(f"team {args.team} has no service {args.slug!r}")
    context.notice(f"service {args.slug}: {_describe_limits(service.limits)}")


def _services_list(args: argparse.Namespace, context: _Context) -> None:
    _require_known_team(context, args.team)
    rows = [
        [s.slug, s.service_type.value, s.service_status.value, s.display_name]
        for s in context.store.services.list(args.team)
    ]
    _print_table(context.stdout, ["SLUG", "TYPE", "STATUS", "NAME"], rows)


def _find_service(context: _Context, team: uuid.UUID, slug: str) -> Service:
    service = context.store.services.get(team, slug)
    if service is None:
        raise CommandError(f"team {team} has no service {slug!r}")
    return service


def _services_show(args: argparse.Namespace, context: _Context) -> None:
    service = _find_service(context, args.team, args.slug)
    limits = service.limits
    fields = [
        ("id", str(service.id)),
        ("team", str(service.team_id)),
        ("slug", service.slug),
        ("name", service.display_name),
        ("type", service.service_type.value),
        ("status", service.service_status.value),
        ("upstream", service.upstream_url),
        ("external_url", service.external_url),
        ("credential_ref", service.external_auth_credential_id),
        ("usage_prompt", service.usage_prompt),
        ("openapi_url", service.openapi_url),
        ("rate", None if limits.rate is None else str(limits.rate)),
        ("max_in_flight", None if limits.max_in_flight is None else str(limits.max_in_flight)),
    ]
    for name, value in fields:
        if value is not None:
            print(f"{name + ':':<16}{value}", file=context.stdout)


def _services_set_status(args: argparse.Namespace, context: _Context) -> None:
    status = ServiceStatus(args.status)
    if not context.store.services.set_status(args.team, args.slug, status):
        raise CommandError(f"team {args.team} has no service {args.slug!r}")
    context.notice(f"service {args.slug} is now {status.value}")


def _services_remove(args: argparse.Namespace, context: _Context) -> None:
    if not context.store.services.remove(args.team, args.slug):
        raise CommandError(f"team {args.team} has no service {args.slug!r}")
    context.notice(f"removed service {args.slug} from team {args.team}")


# -- members -------------------------------------------------------------------------------


def _members_set(args: argparse.Namespace, context: _Context) -> None:
    role = Role(args.role)
    context.store.memberships.set_role(args.team, args.user, role)
    context.notice(f"{args.user} is now {role.value} of team {args.team}")


def _members_remove(args: argparse.Namespace, context: _Context) -> None:
    if not context.store.memberships.remove(args.team, args.user):
        raise CommandError(f"{args.user!r} is not a member of team {args.team}")
    context.notice(f"removed {args.user} from team {args.team}")


def _members_list(args: argparse.Namespace, context: _Context) -> None:
    _require_known_team(context, args.team)
    rows = [[m.user_id, m.role.value] for m in context.store.memberships.list(args.team)]
    _print_table(context.stdout, ["USER", "ROLE"], rows)


# -- teams ---------------------------------------------------------------------------------


def _teams_set_limits(args: argparse.Namespace, context: _Context) -> None:
    if args.rate is None and args.max_in_flight is None:
        raise CommandError("give --rate and/or --max-in-flight", EXIT_USAGE)
    _require_known_team(context, args.team)
    team_limits = context.store.team_limits
    context.store.init()  # creates the table in a store made by an earlier release
    team_limits.set(args.team, _limits_of(args, TeamLimits), fields=_limits_given(args))
    stored = team_limits.get(args.team) or TeamLimits()
    context.notice(f"team {args.team}: {_describe_limits(stored)}")


def _teams_limits(args: argparse.Namespace, context: _Context) -> None:
    rows = [
        [
            str(team),
            "-" if limits.rate is None else str(limits.rate),
            "-" if limits.max_in_flight is None else str(limits.max_in_flight),
        ]
        for team, limits in context.store.team_limits.list_all()
    ]
    _print_table(context.stdout, ["TEAM", "RATE", "MAX IN FLIGHT"], rows)


# -- credentials ---------------------------------------------------------------------------


def _credentials_issue(args: argparse.Namespace, context: _Context) -> None:
    kind = CredentialKind(args.kind)
    if kind is CredentialKind.INTEGRATION and args.user is not None:
        raise CommandError(
            "an integration key belongs to the team: --user is for --kind device", EXIT_USAGE
        )
    if kind is CredentialKind.DEVICE:
        if args.user is None:
            raise CommandError("--kind device needs --user", EXIT_USAGE)
        if context.store.memberships.role_of(args.team, args.user) is None:
            raise CommandError(
                f"{args.user!r} is not a member of team {args.team} "
                f"(add them first: {PROG} members set --team {args.team} --user USER ROLE)"
            )
    expires_at = None
    if args.expires_in is not None:
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.expires_in)
    issued = context.store.credentials.issue(
        kind, team_id=args.team, user_id=args.user, name=args.name or "", expires_at=expires_at
    )
    print(issued.key, file=context.stdout)
    context.notice(
        f"issued {args.kind} key {issued.record.prefix}… (id {issued.record.id}) for team "
        f"{args.team}; it is shown only this once"
    )


def _credentials_revoke(args: argparse.Namespace, context: _Context) -> None:
    record = _find_credential(context, args.credential)
    context.store.credentials.revoke(record.id)
    if record.revoked_at is not None:
        context.notice(f"key {record.prefix}… (id {record.id}) was already revoked")
    else:
        context.notice(f"revoked key {record.prefix}… (id {record.id})")


def _find_credential(context: _Context, reference: str) -> CredentialRecord:
    """A credential by id, by prefix, or by the key itself (matched against its hash)."""
    store = context.store.credentials
    try:
        credential_id = uuid.UUID(reference)
    except ValueError:
        credential_id = None
    if credential_id is not None:
        record = store.get(credential_id)
        if record is None:
            raise CommandError(f"no credential with id {reference}")
        return record
    reference = reference.removesuffix("…")
    # Never repeated whole: what was given may be a key (the README lets one revoke by it).
    shown = reference if len(reference) <= PREFIX_LENGTH else reference[:PREFIX_LENGTH] + "…"
    if CredentialKind.of_key(reference) is None or len(reference) < PREFIX_LENGTH:
        raise CommandError(
            f"not a credential id or prefix: {shown!r} (see `{PROG} credentials list`)",
            EXIT_USAGE,
        )
    candidates = store.find_by_prefix(reference[:PREFIX_LENGTH])
    if len(reference) > PREFIX_LENGTH:
        candidates = [r for r in candidates if key_matches(reference, r.key_hash)]
    if not candidates:
        raise CommandError(f"no credential with prefix {reference[:PREFIX_LENGTH]}")
    if len(candidates) > 1:
        raise CommandError(f"prefix {shown} matches {len(candidates)} credentials: revoke by id")
    return candidates[0]


def _credentials_list(args: argparse.Namespace, context: _Context) -> None:
    _require_known_team(context, args.team)
    rows = [
        [
            str(r.id),
            r.prefix + "…",
            r.kind.value,
            r.user_id or "-",
            r.name or "-",
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.revoked_at),
            _when(r.last_used_at),
        ]
        for r in context.store.credentials.list(args.team)
    ]
    headers = ["ID", "PREFIX", "KIND", "USER", "NAME", "CREATED", "EXPIRES", "REVOKED", "LAST-USED"]
    _print_table(context.stdout, headers, rows)


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_table(out: TextIO, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip(), file=out)


if __name__ == "__main__":
    sys.exit(main())
