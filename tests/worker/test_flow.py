"""How many messages a worker holds: the flow rule, driven through a stand-in for Celery's QoS."""

from __future__ import annotations

from genqueue_worker.flow import Flow


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
