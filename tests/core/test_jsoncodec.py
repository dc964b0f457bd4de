"""JSON columns through genqueue.db.jsoncodec (orjson, the standard library for what orjson refuses), written
and read back on real SQL."""

from __future__ import annotations

import math
import uuid

from sqlalchemy import text

from genqueue.db import jsoncodec
from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store


def test_what_orjson_refuses_is_written_as_the_standard_library_writes_it() -> None:
    assert jsoncodec.dumps({1: "a", "b": [1.5, None]}) == '{"1":"a","b":[1.5,null]}'
    assert jsoncodec.dumps({"n": 2**70}) == '{"n": 1180591620717411303424}'  # past 64 bits
    assert jsoncodec.dumps({"s": "\udc80"}) == '{"s": "\\udc80"}'  # a lone surrogate
    assert jsoncodec.dumps({"x": math.nan}) == '{"x":null}'  # JSON has no NaN
    # Rows that the standard library wrote before (NaN into SQLite) are still read.
    assert math.isnan(jsoncodec.loads('{"x": NaN}')["x"])
    assert jsoncodec.loads(b'{"a":"\xc3\xa9"}') == {"a": "é"}
    # Integers past 64 bits come back exact, as json.loads reads them (orjson alone would give a float).
    for n in (2**64 + 1, 2**70, -(2**63) - 1, 10**30):
        assert jsoncodec.loads(jsoncodec.dumps({"n": n, "s": "x"})) == {"n": n, "s": "x"}
    assert jsoncodec.loads('{"n": 18446744073709551615}') == {"n": 2**64 - 1}


def test_json_columns_round_trip_on_real_sql(db: Database) -> None:
    doc = {"prompt": "héllo ✓", "seed": 2**62, "nested": {"1": [1, 2.25, None, True]}}
    jid = str(uuid.uuid4())
    # Canceled, not queued: the session's database is shared, and the reconciler tests count queued rows.
    with db.session() as s:
        key, _ = create_key(s, "t", Role.client)
        store.insert_jobs(s, [{"id": jid, "owner_id": key.id, "model": "m", "model_version": "1", "kind": "text",
                               "status": "canceled", "priority": 5, "input": doc, "metadata_": {1: "one", "big": 2**70 + 1},
                               "review_policy": "auto", "webhook_events": [], "metrics": {}, "attempts": 0}])
        s.commit()
    with db.session() as s:
        job = s.get(Job, jid)
        assert job is not None
        assert job.input == doc
        assert job.metadata_ == {"1": "one", "big": 2**70 + 1}  # exact (not a float), on both stores
        raw = s.execute(text("SELECT input FROM jobs WHERE id = :i"), {"i": jid}).scalar_one()
    # SQLite keeps the text as written: compact, UTF-8 rather than \u escapes.
    if db.engine.dialect.name == "sqlite":
        assert "héllo ✓" in raw and ", " not in raw
