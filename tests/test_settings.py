"""The settings table in ``_settings.py`` is the one source: the README's table, the table in
the ``config`` module's docstring and the standalone starter file must say the same."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from invoke_middleware import config
from invoke_middleware._settings import SETTINGS, STORE_SETTINGS
from invoke_middleware._toml_config import starter_config
from invoke_middleware.limits import LimitSettings
from invoke_middleware.pipeline import PipelineSettings
from invoke_middleware.store.sql import DEFAULT_SERVICE_CACHE_TTL
from invoke_middleware.transport.base import DEFAULT_TIMEOUTS

README = Path(__file__).resolve().parents[1] / "README.md"

Row = tuple[str, str, str, str]


def _expected_rows() -> list[Row]:
    rows = []
    for name, setting in SETTINGS.items():
        assert setting.doc is not None, f"{name} has no documentation in _settings.py"
        rows.append((name, setting.doc.type, setting.doc.default, setting.doc.meaning))
    return rows


def _plain(cell: str) -> str:
    """A cell without Markdown/reStructuredText code marks."""
    return cell.replace("``", "").replace("`", "").strip()


def _readme_rows() -> list[Row]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Settings\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0] == "| name | type | default | meaning |"
    rows = []
    for line in lines[1:]:
        name, type_, default, meaning = (_plain(c) for c in line.strip("|").split(" | "))
        rows.append((name, type_, default, meaning))
    return rows


def _docstring_rows() -> list[Row]:
    doc = config.__doc__
    assert doc is not None
    border = re.search(r"^=+(?:  =+)+$", doc, re.MULTILINE)
    assert border is not None, "the config module's docstring has no settings table"
    spans = [m.span() for m in re.finditer("=+", border.group())]
    table = doc[border.start() :].split("\n\n", 1)[0].splitlines()
    body = [line for line in table if not line.startswith("=")][1:]  # without the header

    def cells(line: str) -> Row:
        starts = [start for start, _ in spans] + [len(line)]
        name, type_, default, meaning = (_plain(line[starts[i] : starts[i + 1]]) for i in range(4))
        return (name, type_, default, meaning)

    return [cells(line) for line in body]


def test_the_readme_settings_table_is_the_settings_table() -> None:
    assert _readme_rows() == _expected_rows()


def test_the_config_module_table_is_the_settings_table() -> None:
    assert _docstring_rows() == _expected_rows()


_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _documented_value(text: str) -> object:
    """A documented default as a value: ``10 MiB`` -> 10485760, ``false`` -> False,
    ``off`` -> None (a limit that is not set)."""
    number, _, unit = text.partition(" ")
    if number.isdigit():
        return int(number) * _UNITS.get(unit, 1)
    try:
        return float(text)
    except ValueError:
        return {"false": False, "true": True, "off": None, '""': ""}.get(text, text)


def _real_defaults() -> dict[str, object]:
    pipeline = PipelineSettings()
    defaults: dict[str, object] = {
        name: getattr(pipeline, name)
        for name in SETTINGS
        if hasattr(pipeline, name) and name != "timeouts"
    }
    defaults.update(
        prefix="",
        service_cache_ttl=DEFAULT_SERVICE_CACHE_TTL,
        connect_timeout=DEFAULT_TIMEOUTS.connect,
        read_timeout=DEFAULT_TIMEOUTS.read,
        total_timeout=DEFAULT_TIMEOUTS.total,
        **{"jwt.leeway": 0, "jwt.cache_size": 0},
    )
    limits = LimitSettings()
    defaults.update(
        (name, getattr(limits, name.removeprefix("limits.")))
        for name in SETTINGS
        if name.startswith("limits.") and name != "limits.teams"  # a table: no value to show
    )
    return defaults


@pytest.mark.parametrize("name", sorted(_real_defaults()))
def test_each_documented_default_is_the_real_default(name: str) -> None:
    doc = SETTINGS[name].doc
    assert doc is not None

    if doc.type.startswith("list of"):
        # A list's documented default is read by the setting's own converter ("none": empty).
        documented = () if doc.default == "none" else SETTINGS[name].convert(doc.default)
    else:
        documented = _documented_value(doc.default.removesuffix(" (off)"))
    assert documented == _real_defaults()[name]


def _uncommented_starter() -> dict[str, dict[str, object]]:
    """The starter file with every commented ``key = value`` line of its tables switched on."""
    lines = []
    for line in starter_config().splitlines():
        match = re.fullmatch(r"# (\[\w+\]|\w+ = .*)", line)
        lines.append(match.group(1) if match else line)
    return tomllib.loads("\n".join(lines))


def test_the_starter_file_shows_every_gateway_setting_with_its_default() -> None:
    gateway = _uncommented_starter()["gateway"]
    names = [n for n in SETTINGS if "." not in n and n not in STORE_SETTINGS]
    # ca_bundle and mcp_allowed_origins have no default value to show: the starter gives
    # examples. Every other value shown, read by its setting's converter, is the default.
    examples = {"ca_bundle", "mcp_allowed_origins"}
    shown = {name: value for name, value in gateway.items() if name not in examples}

    assert sorted(gateway) == sorted(names)
    assert {name: SETTINGS[name].convert(value) for name, value in shown.items()} == {
        name: _real_defaults()[name] for name in shown
    }


def test_the_starter_file_names_every_jwt_setting() -> None:
    jwt_part = starter_config().split("[jwt]", 1)[1].split("[secrets]", 1)[0]
    names = [n.removeprefix("jwt.") for n in SETTINGS if n.startswith("jwt.")]

    assert [n for n in names if not re.search(rf"\b{n}\b", jwt_part)] == []


def test_the_starter_file_names_every_limits_setting() -> None:
    limits_part = starter_config().split("[limits]", 1)[1].split("[secrets]", 1)[0]
    names = [n.removeprefix("limits.") for n in SETTINGS if n.startswith("limits.")]

    assert [n for n in names if not re.search(rf"^# {n}\b", limits_part, re.MULTILINE)] == []


def test_the_starter_files_store_table_shows_the_cache_default() -> None:
    store = _uncommented_starter()["store"]

    assert sorted(store) == ["database", "service_cache_ttl"]
    assert store["service_cache_ttl"] == DEFAULT_SERVICE_CACHE_TTL
