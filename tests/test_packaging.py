"""The built wheel ships the schemas and the type marker, and the package list is complete."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "invoke_middleware"

# A fresh build resolves the build backend through pip's build isolation; give it time.
BUILD_TIMEOUT_SECONDS = 300


def listed_packages() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return sorted(config["options"]["packages"].split())


def source_packages() -> list[str]:
    """Every folder of the package tree that holds Python modules, as a dotted name."""
    found = []
    # followlinks: invoke_middleware/schemas links to the top-level schemas/ folder.
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(name.endswith(".py") for name in files):
            found.append(".".join(Path(folder).relative_to(ROOT).parts))
    return sorted(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    [built] = out.glob("invoke_middleware-*.whl")
    return built


def test_setup_cfg_lists_every_package_of_the_source_tree() -> None:
    assert listed_packages() == source_packages()


def test_every_package_folder_is_a_regular_package() -> None:
    for name in source_packages():
        assert (ROOT.joinpath(*name.split(".")) / "__init__.py").is_file(), name


def test_wheel_ships_the_schemas_and_the_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = sorted(p.name for p in (ROOT / "schemas").glob("*.json"))
    assert schemas, "the schemas folder holds no documents"
    for schema in schemas:
        assert f"invoke_middleware/schemas/{schema}" in names
    assert "invoke_middleware/schemas/__init__.py" in names
    assert "invoke_middleware/py.typed" in names


def test_wheel_ships_every_listed_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in listed_packages():
        assert package.replace(".", "/") + "/__init__.py" in names


def test_installed_wheel_loads_its_bundled_schemas(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    probe = (
        "import invoke_middleware, invoke_middleware.envelope as e;"
        "print(invoke_middleware.__file__);"
        "print(e.load_schema('openapi.json')['openapi']);"
        'print(e.parse_envelope(b\'{"method":"GET","path":"/x"}\', max_body_bytes=1).path)'
    )
    # The installed copy comes first on the path; dependencies come from this interpreter.
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    location, openapi, path = result.stdout.split()
    assert Path(location).is_relative_to(target)
    assert (openapi, path) == ("3.1.0", "/x")
