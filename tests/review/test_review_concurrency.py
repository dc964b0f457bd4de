"""Moderators working at once, each in a thread with a connection of its own, on SQLite and PostgreSQL: no
item is handed to two of them, every item is decided exactly once, and a content backend following the
feed with its cursor while decisions commit sees every approved item once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from review_helpers import key, outputs
from sqlalchemy import func, select

from genqueue.db.models import AuditEvent, Review
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.review import state
from genqueue_api.services import feed


def _moderate(url: str, model: str, actor: state.Actor, claimed: list[str], errors: list[BaseException],
              reject_every: int = 0) -> None:
    db = Database(url)  # an engine, so a connection, of this thread's own
    try:
        while True:
            with db.session() as s:
                ids = state.claim(s, actor, 7, model=model)
                s.commit()
            if not ids:
                with db.session() as s:  # SKIP LOCKED may hand out nothing while others hold the rest
                    left = s.scalar(select(func.count()).select_from(Review).where(
                        Review.model == model, Review.status == "pending"))
                if not left:
                    return
                time.sleep(0.005)
                continue
            claimed.extend(ids)
            for i in ids:
                reject = reject_every and hash(i) % reject_every == 0
                with db.session() as s:
                    state.decide(s, actor, i, "reject" if reject else "approve", "no" if reject else None)
                    s.commit()
    except BaseException as e:
        errors.append(e)
    finally:
        db.dispose()


def _run_moderators(db: Database, model: str, n: int, reject_every: int = 0) -> list[str]:
    actors = [state.Actor.of(key(db, Role.moderator, f"mod{i}")) for i in range(n)]
    claimed: list[list[str]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_moderate, args=(db.url, model, a, c, errors, reject_every))
               for a, c in zip(actors, claimed, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    every = [i for c in claimed for i in c]
    assert sum(1 for c in claimed if c) > 1  # the work was really shared
    return every


@pytest.mark.slow
def test_eight_moderators_never_share_an_item(db: Database) -> None:
    ids, model = outputs(db, 500)
    every = _run_moderators(db, model, 8)
    assert len(every) == 500 and set(every) == set(ids)  # none claimed twice, none left out
    with db.session() as s:
        actions = Counter(s.execute(select(AuditEvent.action).where(AuditEvent.job_id.in_(ids))).scalars())
        statuses = Counter(s.execute(select(Review.status).where(Review.job_id.in_(ids))).scalars())
        seqs = list(s.execute(select(Review.feed_seq).where(Review.job_id.in_(ids))).scalars())
    assert actions == {"prescreen": 500, "claim": 500, "approve": 500}  # each decided exactly once
    assert statuses == {"approved": 500}
    assert None not in seqs and len(set(seqs)) == 500


@pytest.mark.slow
def test_a_feed_follower_misses_nothing_and_sees_nothing_twice(db: Database) -> None:
    owner = key(db, Role.client, "backend")
    ids, model = outputs(db, 240, owner=owner)
    done = threading.Event()
    seen: list[str] = []
    cursors: list[str] = []
    errors: list[BaseException] = []

    def follow() -> None:
        follower = Database(db.url)
        cursor: str | None = None
        try:
            while True:
                finished = done.is_set()  # read before the page: a page read after it is complete
                with follower.session() as s:
                    page = feed.read(s, owner, cursor, random.choice((1, 5, 50)))
                seen.extend(item.job_id for item in page.data)
                cursors.extend(item.cursor for item in page.data)
                cursor = page.next_cursor
                if finished and not page.data:
                    return
                if not page.data:
                    time.sleep(0.002)
        except BaseException as e:
            errors.append(e)
        finally:
            follower.dispose()

    t = threading.Thread(target=follow)
    t.start()
    try:
        _run_moderators(db, model, 4, reject_every=5)
    finally:
        done.set()
        t.join(120)
    assert not errors, errors
    with db.session() as s:
        approved = set(s.execute(select(Review.job_id).where(Review.job_id.in_(ids),
                                                            Review.status == "approved")).scalars())
    assert 0 < len(approved) < len(ids)  # some were rejected, and those never reach the feed
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(seen) == approved  # nothing missed, nothing rejected
    assert [feed.decode(c) for c in cursors] == sorted(feed.decode(c) for c in cursors)
