"""Request-level ("static") batching, the benchmarks' baseline against continuous batching.

Classic request-level batching (Hugging Face ``generate`` on a list): a batch is admitted only when the
previous one is gone; finished rows stay in it, padded and computed, until its longest row finishes. Each
job is still reported finished the moment its own rows are done. Nothing runs ahead and nothing refills.
The text engine takes it in place of the continuous scheduler: ``TextEngine(..., scheduler=StaticScheduler)``.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from genqueue_worker.engine.scheduler import Scheduler, SchedulerOutput, SeqStatus, Sequence, SequenceGroup


class StaticScheduler(Scheduler):
    def schedule(self) -> SchedulerOutput:
        removed: list[int] = []
        # The whole batch leaves together, once its longest row is done.
        if self._running and all(s.status is SeqStatus.finished for s in self._running.values()):
            removed = list(self._running)
            self._running.clear()
        self._pending_removed.clear()
        return self._output(removed, admit=not self._running)

    def refill(self) -> SchedulerOutput | None:
        return None

    def prefill_ahead(self, todo: Seq[SequenceGroup], held: int) -> list[SequenceGroup]:
        return []

    def _release_row(self, seq: Sequence) -> None:
        pass  # the row stays, as padding, until the whole batch leaves
