"""Per-request cost of each auth resolver, against a baseline measured in the same run.

Run: ``python bench/bench_auth.py`` (writes ``bench/results/auth.md``).

Every resolver is called with a fresh :class:`PipelineRequest` per call, as the gateway does, so
the baseline is "build a request and call a resolver that does nothing". The in-memory stores
are used, so the credential numbers are the resolver's own cost; a database store adds its
round trip for ``find_by_prefix`` (and ``role_of`` for device keys and JWTs).
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path

import cryptography
import jwt

from invoke_middleware.auth import (
    CredentialKind,
    CredentialResolver,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    JWTResolver,
    Principal,
    Role,
)
from invoke_middleware.headers import Headers
from invoke_middleware.request import PipelineRequest
from invoke_middleware.testing import generate_keypair, issue_test_credential, mint_jwt

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
SECRET = "bench-secret-" + "b" * 40
RESULTS = Path(__file__).parent / "results" / "auth.md"


def make_request(token: str) -> PipelineRequest:
    return PipelineRequest(
        method="POST",
        path="/r/invoke/echo",
        query="",
        headers=Headers(
            [
                ("Host", "gateway.test"),
                ("Authorization", f"Bearer {token}"),
                ("X-Team-ID", str(TEAM)),
                ("Content-Type", "application/json"),
                ("Content-Length", "2"),
            ]
        ),
        remote_addr="127.0.0.1",
        scheme="http",
        host="gateway.test",
        body=io.BytesIO(b"{}"),
    )


def no_op(request: PipelineRequest) -> Principal | None:
    return None


def cases() -> list[tuple[str, Callable[[PipelineRequest], Principal | None], str]]:
    memberships = InMemoryMembershipStore()
    memberships.set_role(TEAM, "alice", Role.MEMBER)
    credentials = InMemoryCredentialStore()
    # A realistic store holds many keys; the resolver must not scan them all.
    for _ in range(1000):
        issue_test_credential(credentials, CredentialKind.INTEGRATION, uuid.uuid4())
    sk = issue_test_credential(credentials, CredentialKind.INTEGRATION, TEAM)
    dk = issue_test_credential(credentials, CredentialKind.DEVICE, TEAM, "alice")
    credential_resolver = CredentialResolver(credentials, memberships)

    rsa = generate_keypair("RS256")
    ec = generate_keypair("ES256")
    hs_token = mint_jwt(secret_or_private_key=SECRET, sub="alice", expires_in=3600)
    rs_token = mint_jwt(
        secret_or_private_key=rsa.private_pem, sub="alice", algorithm="RS256", expires_in=3600
    )
    es_token = mint_jwt(
        secret_or_private_key=ec.private_pem, sub="alice", algorithm="ES256", expires_in=3600
    )

    def jwt_resolver(key: bytes | str, algorithm: str, cache_size: int) -> JWTResolver:
        return JWTResolver(memberships, key=key, algorithms=[algorithm], cache_size=cache_size)

    return [
        ("baseline: build request + no-op resolver", no_op, hs_token),
        ("sk- integration key", credential_resolver, sk),
        ("dk- device key", credential_resolver, dk),
        ("JWT HS256, uncached", jwt_resolver(SECRET, "HS256", 0), hs_token),
        ("JWT HS256, cached", jwt_resolver(SECRET, "HS256", 1000), hs_token),
        ("JWT RS256, uncached", jwt_resolver(rsa.public_pem, "RS256", 0), rs_token),
        ("JWT RS256, cached", jwt_resolver(rsa.public_pem, "RS256", 1000), rs_token),
        ("JWT ES256, uncached", jwt_resolver(ec.public_pem, "ES256", 0), es_token),
        ("JWT ES256, cached", jwt_resolver(ec.public_pem, "ES256", 1000), es_token),
    ]


def measure(resolver: Callable[[PipelineRequest], Principal | None], token: str) -> float:
    """Median over repeats of the best-case per-call time, in microseconds."""

    def call() -> None:
        resolver(make_request(token))

    call()  # warm up: caches, the JWKS, lazily built objects
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    runs = timer.repeat(repeat=7, number=number)
    return statistics.median(runs) / number * 1e6


def _summary(micros: dict[str, float]) -> str:
    sk = micros["sk- integration key"]
    rs_uncached = micros["JWT RS256, uncached"]
    rs_cached = micros["JWT RS256, cached"]
    return (
        f"Signature verification dominates: an uncached RS256 token costs "
        f"{rs_uncached / sk:.1f}x an sk- key; with the verified-token cache "
        f"(`JWTResolver(cache_size=...)`) it costs {rs_cached / sk:.1f}x."
    )


def main() -> None:
    rows = []
    baseline = None
    for name, resolver, token in cases():
        micros = measure(resolver, token)
        baseline = baseline if baseline is not None else micros
        rows.append((name, micros, micros / baseline))
        print(f"{name:45} {micros:9.2f} µs  x{micros / baseline:6.1f}")

    lines = [
        "# Auth resolver cost per request",
        "",
        "Produced by `bench/bench_auth.py`. Each call builds a fresh `PipelineRequest` and runs",
        "one resolver on it; in-memory stores (1,002 credentials); median of 7 repeats.",
        "The ratio is against the baseline measured in the same run.",
        "",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        f"- PyJWT {jwt.__version__}, cryptography {cryptography.__version__}",
        "",
        "| resolver | µs per request | x baseline |",
        "|---|---:|---:|",
        *(f"| {name} | {micros:.2f} | {ratio:.1f} |" for name, micros, ratio in rows),
        "",
        _summary({name: micros for name, micros, _ in rows}),
        "",
        "Timings on a shared machine vary by a few tens of percent between runs; the ratios",
        "within one run are what to compare.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print(f"written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
