"""Cost of reading an invoke envelope, against full JSON Schema validation in the same run.

Run: ``python bench/bench_envelope.py`` (writes ``bench/results/envelope.md``).

``parse_envelope`` decodes the JSON, checks it, decodes ``body_base64`` and expands the
headers. A valid envelope is checked by a hand-written conformance test held to the bundled
schema (``tests/test_envelope_properties.py``); jsonschema runs only to explain a refusal.
The baseline is what validating the same document with the compiled jsonschema validator
alone costs, so the ratio says what the fast path saves on every invoke.
"""

from __future__ import annotations

import base64
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from invoke_middleware.envelope import REQUEST_VALIDATOR, parse_envelope

RESULTS = Path(__file__).parent / "results" / "envelope.md"
NUMBER = 2000
REPEAT = 7

SMALL = {
    "method": "POST",
    "path": "/api/generate?stream=false",
    "body_base64": base64.b64encode(b'{"prompt": "hello"}').decode(),
    "headers": {"Content-Type": "application/json", "X-Trace": ["a", "b"]},
}
LARGE = {**SMALL, "body_base64": base64.b64encode(bytes(range(256)) * 4096).decode()}
INVALID = {"method": "get", "path": "//evil", "headers": {"Bad Name": "v"}}


def per_call(function: Callable[[], object], number: int = NUMBER) -> float:
    """Median µs per call over :data:`REPEAT` runs of ``number`` calls."""
    runs = timeit.repeat(function, number=number, repeat=REPEAT)
    return statistics.median(runs) / number * 1e6


def refused(raw: bytes) -> Callable[[], None]:
    def call() -> None:
        try:
            parse_envelope(raw, max_body_bytes=10 << 20)
        except Exception:
            return
        raise AssertionError("the invalid envelope was accepted")

    return call


def main() -> None:
    small, large, invalid = (json.dumps(d).encode() for d in (SMALL, LARGE, INVALID))
    rows = [
        (
            "small envelope: jsonschema validation alone (baseline)",
            per_call(lambda: REQUEST_VALIDATOR.is_valid(json.loads(small))),
        ),
        (
            "small envelope: parse_envelope",
            per_call(lambda: parse_envelope(small, max_body_bytes=10 << 20)),
        ),
        (
            "1 MiB body: jsonschema validation alone",
            per_call(lambda: REQUEST_VALIDATOR.is_valid(json.loads(large)), 20),
        ),
        (
            "1 MiB body: parse_envelope",
            per_call(lambda: parse_envelope(large, max_body_bytes=10 << 20), 20),
        ),
        (
            "invalid envelope: parse_envelope (refusal with details)",
            per_call(refused(invalid), 500),
        ),
    ]
    baseline = rows[0][1]
    lines = [
        "# Invoke envelope: parse and check",
        "",
        "Produced by `bench/bench_envelope.py`: median of 7 runs, µs per call; ratios against",
        "the first row, measured in the same run.",
        "",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}",
        f"- jsonschema {version('jsonschema')}",
        "",
        "| case | µs per call | x baseline |",
        "|---|---:|---:|",
        *(f"| {name} | {value:.1f} | {value / baseline:.2f} |" for name, value in rows),
        "",
    ]
    text = "\n".join(lines)
    RESULTS.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
