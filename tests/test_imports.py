"""A bare ``import invoke_middleware`` is cheap: optional and heavy dependencies load only
when the part that needs them is used (see ``bench/bench_import.py`` for the time it takes)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import invoke_middleware
from invoke_middleware import auth, transport

ROOT = Path(__file__).resolve().parent.parent

#: What ``import invoke_middleware`` must not load: each is needed only by one optional part
#: (RequestsTransport; JWTResolver; the explanation of a refused envelope; SQLStore; rate
#: limits and their Redis), or by nothing at all (werkzeug), or only by the host's tests (the
#: testing helpers).
HEAVY_MODULES = [
    "requests",
    "urllib3",
    "jwt",
    "cryptography",
    "jsonschema",
    "sqlalchemy",
    "werkzeug",
    "limits",
    "redis",
    "a2wsgi",
    # The default transport's own imports: loaded when a pipeline needs one, not before.
    "http.client",
    "ssl",
    "invoke_middleware.testing",
]


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return set(done.stdout.split())


@pytest.fixture(scope="module")
def bare_import() -> set[str]:
    return loaded_after("import invoke_middleware")


@pytest.mark.parametrize("module", HEAVY_MODULES)
def test_a_bare_import_does_not_load(bare_import: set[str], module: str) -> None:
    assert "invoke_middleware.middleware" in bare_import  # the import did run
    assert module not in bare_import


@pytest.mark.parametrize(
    ("name", "module"),
    [
        pytest.param("JWTResolver", "jwt", id="JWTResolver-loads-pyjwt"),
        pytest.param("RequestsTransport", "requests", id="RequestsTransport-loads-requests"),
    ],
)
def test_a_lazy_name_loads_its_dependency_when_first_read(name: str, module: str) -> None:
    assert module in loaded_after(f"import invoke_middleware\ninvoke_middleware.{name}")


@pytest.mark.parametrize(
    ("package", "name", "defined_in"),
    [
        pytest.param(invoke_middleware, "JWTResolver", "invoke_middleware.auth.jwt", id="jwt"),
        pytest.param(auth, "JWTResolver", "invoke_middleware.auth.jwt", id="auth-jwt"),
        pytest.param(auth, "team_from_header", "invoke_middleware.auth.jwt", id="auth-team"),
        pytest.param(
            invoke_middleware,
            "RequestsTransport",
            "invoke_middleware.transport.requests",
            id="requests",
        ),
        pytest.param(
            transport,
            "RequestsTransport",
            "invoke_middleware.transport.requests",
            id="transport-requests",
        ),
        pytest.param(
            transport, "HTTPTransport", "invoke_middleware.transport.http", id="transport-http"
        ),
        pytest.param(
            transport, "WSGITransport", "invoke_middleware.transport.wsgi", id="transport-wsgi"
        ),
    ],
)
def test_a_lazy_name_is_listed_and_resolves_to_its_definition(
    package: object, name: str, defined_in: str
) -> None:
    assert name in package.__all__  # type: ignore[attr-defined]
    assert name in dir(package)
    assert getattr(package, name) is getattr(sys.modules[defined_in], name)


@pytest.mark.parametrize("package", [invoke_middleware, auth, transport])
def test_an_unknown_name_is_an_attribute_error(package: object) -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_the_transport_contract_imports_only_the_standard_library_and_light_modules() -> None:
    light = {"invoke_middleware.errors", "invoke_middleware.headers"}
    tree = ast.parse((ROOT / "invoke_middleware" / "transport" / "base.py").read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }

    assert imported  # the parse found the imports
    outside = {
        name
        for name in imported
        if name is not None and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert outside <= light
