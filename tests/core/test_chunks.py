"""The pure parts of the transport: how ids are cut into messages, and how many messages a worker holds."""

from __future__ import annotations

from genqueue.queue import Publication, plan_chunks
from genqueue_worker.flow import Flow


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


class _QoS:
    """kombu.common.QoS's relative interface, with the value the channel would get."""

    def __init__(self, value: int) -> None:
        self.value, self.prev = value, value

    def increment_eventually(self, n: int = 1) -> int:
        self.value += n
        return self.value

    def decrement_eventually(self, n: int = 1) -> int:
        self.value = max(1, self.value - n)
        return self.value

    def update(self) -> None:
        self.prev = self.value


def test_a_worker_takes_another_message_only_while_it_holds_fewer_jobs_than_a_batch() -> None:
    flow = Flow(target_jobs=32, max_messages=64)
    qos = _QoS(64)  # Celery's initial prefetch: concurrency × multiplier
    flow.attach(qos)
    assert qos.value == 1  # idle: fetch one message
    with flow.message(32) as done_a:
        assert qos.value == 1  # a full batch held: no second message
        done_a()
        assert qos.value == 2  # a row freed up: the next chunk comes in hand
        with flow.message(32) as done_b:
            assert qos.value == 2  # 63 jobs held: no third
            for _ in range(31):
                done_a()
            assert (flow.jobs, qos.value) == (32, 2)
            done_b()
            assert qos.value == 3  # 31 held, two messages unacked: one more
            for _ in range(40):  # more calls than jobs change nothing
                done_b()
            assert flow.jobs == 0
        assert qos.value == 2
    assert (flow.messages, flow.jobs, qos.value) == (0, 0, 1)


def test_small_chunks_are_taken_until_a_batch_is_held_but_never_past_the_task_threads() -> None:
    flow = Flow(target_jobs=8, max_messages=5)
    qos = _QoS(5)
    flow.attach(qos)
    ctxs = [flow.message(1) for _ in range(5)]
    for c in ctxs:
        c.__enter__()
    assert qos.value == 5  # 5 jobs < 8, but only 5 task threads
    for c in ctxs:
        c.__exit__(None, None, None)
    assert qos.value == 1
