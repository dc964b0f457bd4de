"""Schemathesis against the OpenAPI schema the API serves, with a valid admin key: every operation, generated
inputs (valid and invalid), a fixed seed. No answer may be a 5xx, and every answer must be one the schema
declares, with the declared content type and body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from reliability_tally import database_of, record
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key


@schemathesis.serializer("application/jsonl")
def _jsonl(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A batch body: each generated item a JSON line (a lone value, one line)."""
    import json

    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(i) + "\n" for i in items).encode()


CASES_PER_OPERATION = 80  # hypothesis stops early where an input space is small: over 1,000 cases per database
_secret: dict[str, str] = {}


@pytest.fixture(scope="module")
def served_app(database_url: str, redis_url_factory: Any, models_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    redis_url = redis_url_factory()
    # No reconciler, and held waits of at most a second: the fuzzer's jobs stay queued and no answer lingers.
    s = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), database_url=database_url, redis_url=redis_url,
                 models_dir=models_dir, reconcile_interval_s=0, max_wait_seconds=1)
    upgrade(s.sqlalchemy_url)
    db = Database(s.sqlalchemy_url)
    with db.session() as session:
        _, _secret["admin"] = create_key(session, "fuzz", Role.admin)
    db.dispose()
    app = create_app(s)
    with TestClient(app):  # runs the lifespan (the publisher, the finished-job listener)
        yield app
    redis_url_factory.release(redis_url)


def test_generated_requests_get_declared_answers_and_no_5xx(served_app: Any, database_url: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served_app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    counted = {"cases": 0, "5xx": 0}
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 17  # every operation of the served schema

    fuzzed = 0
    try:  # the figures reach the reliability record even when a failure stops the loop
        for op in operations:
            @given(case=op.as_strategy())
            @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case: Any) -> None:
                response = case.call(headers={"Authorization": f"Bearer {_secret['admin']}"})
                counted["cases"] += 1
                counted["5xx"] += response.status_code >= 500
                case.validate_response(response, checks=checks)

            try:
                run()
            except Exception as e:  # every operation is fuzzed, and all the failures are reported together
                failures.append(f"{op.label}: {e}")
            fuzzed += 1
    finally:
        record("fuzz", database_of(database_url), cases=counted["cases"], errors_5xx=counted["5xx"],
               operations=len(operations), operations_fuzzed=fuzzed, failures=len(failures))
    assert not failures, "\n\n".join(failures)
    print(f"fuzz: {counted['cases']} cases over {len(operations)} operations, {counted['5xx']} answers 5xx")
    assert counted["cases"] >= 1000 and counted["5xx"] == 0, counted
