"""How ids are cut into messages, the pure part of the transport (the worker side: tests/worker/test_flow.py)."""

from __future__ import annotations

from genqueue.queue import Publication, plan_chunks


def _pubs(n: int, model: str = "m", priority: int = 5, kind: str = "text", start: int = 0) -> list[Publication]:
    return [Publication(f"{model}-{priority}-{i}", model, priority, kind) for i in range(start, start + n)]


def test_chunks_hold_one_model_and_one_priority_and_keep_order() -> None:
    items = _pubs(5, "a", 5) + _pubs(3, "a", 0) + _pubs(4, "b", 5, "image") + _pubs(2, "a", 5, start=5)[::-1]
    chunks = plan_chunks(items, lambda kind: 4 if kind == "text" else 3, lambda model: 1)
    for c in chunks:
        assert {i.split("-")[0] for i in c.job_ids} == {c.model}
        assert {int(i.split("-")[1]) for i in c.job_ids} == {c.priority}
        assert len(c.job_ids) <= (4 if c.model == "a" else 3)
    got = [i for c in chunks for i in c.job_ids]
    assert sorted(got) == sorted(i.job_id for i in items) and len(set(got)) == len(got)
    # a@5 in submit order, the two that came after other groups included
    a5 = [i for c in chunks if (c.model, c.priority) == ("a", 5) for i in c.job_ids]
    assert a5 == [p.job_id for p in items if p.model == "a" and p.priority == 5]
    assert len({c.message_id for c in chunks}) == len(chunks)


def test_a_shallow_group_is_spread_over_the_live_workers() -> None:
    # 10 jobs, 2 workers, batch 32: two chunks of 5, not one of 10 that the first worker would take whole.
    assert [len(c.job_ids) for c in plan_chunks(_pubs(10), lambda k: 32, lambda m: 2)] == [5, 5]
    assert [len(c.job_ids) for c in plan_chunks(_pubs(10), lambda k: 32, lambda m: 3)] == [4, 4, 2]
    # A deep group is cut at the batch size, however many workers there are.
    assert {len(c.job_ids) for c in plan_chunks(_pubs(640), lambda k: 64, lambda m: 2)} == {64}
    assert [len(c.job_ids) for c in plan_chunks(_pubs(1), lambda k: 64, lambda m: 8)] == [1]
