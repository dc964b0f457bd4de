"""Review transitions through genqueue.review.state on real SQL (SQLite and PostgreSQL): policies, claims
under leases, decisions, escalation, release, expiry, and the audit trail of each."""

from __future__ import annotations

import datetime as dt

import pytest
from review_helpers import key, outputs
from sqlalchemy import select, update

from genqueue.db.models import AuditEvent, Review, WebhookDelivery, utcnow
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.review import policy, state
from genqueue.review.policy import ReviewConfig


def _review(db: Database, job_id: str) -> Review:
    with db.session() as s:
        r = s.get(Review, job_id)
        assert r is not None
        return r


def _trail(db: Database, job_id: str) -> list[tuple[str, str | None, str | None, str | None]]:
    with db.session() as s:
        rows = s.execute(select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.id)).scalars()
        return [(e.action, e.actor_name, e.from_status, e.to_status) for e in rows]


def test_policy_resolution() -> None:
    cfg = ReviewConfig("flagged", {"strict-model": "all", "open-model": "none"})
    assert policy.resolve_auto(cfg, "other", None) == "flagged"
    assert policy.resolve_auto(cfg, "other", "none") == "none"
    assert policy.resolve_auto(cfg, "strict-model", "none") == "all"  # the stricter of model and key
    assert policy.resolve_auto(cfg, "open-model", "flagged") == "flagged"
    assert policy.resolve_auto(cfg, "open-model", None) == "none"
    flag = [{"rule": "pii_email", "score": 0.5}]
    assert policy.initial("auto", "flagged", []) == policy.Initial(policy.ReviewStatus.approved, True)
    assert policy.initial("auto", "flagged", flag).status == "pending"
    assert policy.initial("auto", "all", []).status == "pending"
    assert policy.initial("auto", "none", flag).status == "not_required"
    assert policy.initial("required", "none", []).status == "pending"
    assert policy.initial("none", "all", flag).status == "not_required"


def test_outputs_start_as_their_policy_says(db: Database) -> None:
    clean, _ = outputs(db, 1, policy="auto")
    flagged, _ = outputs(db, 1, policy="auto", flags=[{"rule": "pii_phone", "score": 0.5}])
    by_key, _ = outputs(db, 1, policy="auto", owner=key(db, Role.client, review_policy="all"))
    exempt, _ = outputs(db, 1, policy="none")
    r = _review(db, clean[0])
    assert (r.status, r.decided_by) == ("approved", "system") and r.feed_seq is not None
    assert _trail(db, clean[0]) == [("prescreen", "system", None, "approved")]
    r = _review(db, flagged[0])
    assert (r.status, r.feed_seq, r.flag_score) == ("pending", None, 0.5)
    assert _review(db, by_key[0]).status == "pending"
    assert _review(db, exempt[0]).status == "not_required" and _review(db, exempt[0]).feed_seq is not None


def test_claim_decide_and_the_audit_trail(db: Database) -> None:
    ids, model = outputs(db, 3, flags=[])
    _, flagged_model = outputs(db, 0)
    mod = state.Actor.of(key(db, Role.moderator, "mod"))
    other = state.Actor.of(key(db, Role.moderator, "other"))
    with db.session() as s:
        got = state.claim(s, mod, 2, model=model)
        s.commit()
    assert len(got) == 2
    with db.session() as s:  # the third item only: the others are under mod's live claim
        assert state.claim(s, other, 5, model=model) == [i for i in ids if i not in got]
        s.commit()
    a, b = got
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, other, a, "approve", None)
    assert e.value.code == "claimed_by_other"
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, mod, a, "reject", "  ")
    assert (e.value.kind, e.value.code) == ("invalid", "reason_required")
    with db.session() as s:
        state.decide(s, mod, a, "approve", None)
        state.decide(s, mod, b, "reject", "off topic")
        s.commit()
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, mod, a, "reject", "changed my mind")
    assert e.value.code == "already_decided"
    ra, rb = _review(db, a), _review(db, b)
    assert (ra.status, ra.decided_by, ra.claimed_by) == ("approved", mod.id, None) and ra.feed_seq is not None
    assert (rb.status, rb.reason, rb.feed_seq) == ("rejected", "off topic", None)
    assert _trail(db, a) == [("prescreen", "system", None, "pending"), ("claim", mod.name, "pending", "claimed"),
                             ("approve", mod.name, "claimed", "approved")]
    with db.session() as s:
        ev = s.execute(select(AuditEvent).where(AuditEvent.job_id == b, AuditEvent.action == "reject")).scalar_one()
        assert (ev.actor, ev.reason) == (mod.id, "off topic") and ev.at is not None
    assert flagged_model


def test_no_claim_expired_claim_release_and_expiry(db: Database) -> None:
    ids, model = outputs(db, 2)
    mod = state.Actor.of(key(db, Role.moderator))
    other = state.Actor.of(key(db, Role.moderator))
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, mod, ids[0], "approve", None)
    assert e.value.code == "claim_required"
    with db.session() as s:
        assert sorted(state.claim(s, mod, 5, model=model, lease_s=60)) == sorted(ids)
        s.commit()
    with db.session() as s:
        state.release(s, mod, ids[1])
        s.commit()
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.release(s, mod, ids[1])
    assert e.value.code == "not_claimed"
    # The lease of the first runs out: a decision on it is refused, and the item goes back to the queue.
    with db.session() as s:
        s.execute(update(Review).where(Review.job_id == ids[0])
                  .values(claim_expires_at=utcnow() - dt.timedelta(seconds=1)))
        s.commit()
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, mod, ids[0], "approve", None)
    assert e.value.code == "claim_expired"
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.renew(s, mod, ids[0], 60)
    assert e.value.code == "claim_expired"
    with db.session() as s:
        assert sorted(state.claim(s, other, 5, model=model)) == sorted(ids)
        s.commit()
    with db.session() as s:
        until = state.renew(s, other, ids[0], 3600)
        s.commit()
    assert _review(db, ids[0]).claim_expires_at == until
    assert [t[0] for t in _trail(db, ids[0])] == ["prescreen", "claim", "expire", "claim", "renew"]
    assert _trail(db, ids[0])[2] == ("expire", "system", "claimed", "pending")
    assert [t[0] for t in _trail(db, ids[1])] == ["prescreen", "claim", "release", "claim"]


def test_escalated_items_are_for_admins(db: Database) -> None:
    ids, model = outputs(db, 1)
    mod = state.Actor.of(key(db, Role.moderator))
    admin = state.Actor.of(key(db, Role.admin))
    with db.session() as s:
        state.claim(s, mod, 1, model=model)
        state.decide(s, mod, ids[0], "escalate", "not sure")
        s.commit()
    r = _review(db, ids[0])
    assert (r.status, r.claimed_by, r.decided_by, r.feed_seq) == ("escalated", None, None, None)
    with db.session() as s:
        assert state.claim(s, mod, 5, model=model) == []  # moderators never get escalated items
        s.commit()
    with db.session() as s, pytest.raises(state.ReviewError) as e:
        state.decide(s, mod, ids[0], "approve", None)
    assert e.value.kind == "forbidden"
    with db.session() as s:
        assert state.claim(s, admin, 5, model=model) == ids
        state.decide(s, admin, ids[0], "approve", "fine after all")
        s.commit()
    r = _review(db, ids[0])
    assert (r.status, r.decided_by) == ("approved", admin.id) and r.feed_seq is not None
    assert [t[0] for t in _trail(db, ids[0])] == ["prescreen", "claim", "escalate", "claim", "approve"]


def test_admins_decide_without_a_claim_and_webhooks_follow_decisions(db: Database) -> None:
    ids, _ = outputs(db, 2, webhook="https://hooks.example.com/in")
    admin = state.Actor.of(key(db, Role.admin))
    with db.session() as s:
        state.decide(s, admin, ids[0], "approve", None)
        state.decide(s, admin, ids[1], "reject", "no")
        s.commit()
    with db.session() as s:
        rows = s.execute(select(WebhookDelivery).where(WebhookDelivery.job_id.in_(ids))).scalars().all()
    events = {(d.job_id, d.event): d.payload for d in rows}
    assert set(events) == {(ids[0], "job.succeeded"), (ids[1], "job.succeeded"), (ids[0], "review.approved"),
                           (ids[1], "review.rejected")}
    # Nothing under review is in a payload before its approval.
    assert events[(ids[0], "job.succeeded")]["data"]["output"] is None
    assert events[(ids[0], "job.succeeded")]["data"]["review"]["status"] == "pending"
    assert events[(ids[0], "review.approved")]["data"]["output"] == {"texts": [f"text {ids[0]}"]}
    assert events[(ids[1], "review.rejected")]["data"]["output"] is None
    assert events[(ids[1], "review.rejected")]["data"]["review"]["reason"] == "no"


def test_a_decision_that_lost_a_race_changes_nothing(db: Database) -> None:
    ids, model = outputs(db, 1)
    mod = state.Actor.of(key(db, Role.moderator))
    with db.session() as s:
        state.claim(s, mod, 1, model=model)
        s.commit()
    with db.session() as s1, db.session() as s2:
        stale = s2.get(Review, ids[0])  # read before the other decision
        assert stale is not None
        state.decide(s1, mod, ids[0], "approve", None)
        s1.commit()
        with pytest.raises(state.ReviewError) as e:
            state._write(s2, stale, status="rejected")
        assert e.value.code == "concurrent_change"
    assert _review(db, ids[0]).status == "approved"


def test_a_poison_job_gets_its_failed_webhook(db: Database) -> None:
    import uuid

    from genqueue import jobstate as service
    from genqueue_api.store import jobs as store

    owner = key(db, Role.client)
    jid = str(uuid.uuid4())
    with db.session() as s:  # delivered as often as allowed, and its last worker died: the next claim gives up
        store.insert_jobs(s, [{"id": jid, "owner_id": owner.id, "model": "m-poison", "model_version": "1",
                               "kind": "text", "status": "running", "leased_by": "dead", "priority": 5,
                               "lease_expires_at": utcnow() - dt.timedelta(seconds=1), "input": {"prompt": "x"},
                               "metadata_": {}, "review_policy": "auto", "webhook": "https://hooks.example.com/in",
                               "webhook_events": ["completed"], "metrics": {}, "attempts": 3}])
        s.commit()
    with db.session() as s:
        assert service.claim_many(s, [jid], "w", 60, 3)[jid] == service.Skipped("poison")
    with db.session() as s:
        d = s.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == jid)).scalar_one()
    assert d.event == "job.failed" and d.payload["data"]["error"]["code"] == "poison_job"
