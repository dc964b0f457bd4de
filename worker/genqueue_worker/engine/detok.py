"""Incremental detokenization: the text of a growing list of generated ids at two short decodes per token.

Stop strings are matched on decoded text. Decoding all generated ids again at every step costs time linear
in the output (~65 us for 1000 tiny-lm ids), so a long output with stop strings paid quadratic time and, in
a batch of 32 such rows, more than a millisecond per step. This follows vLLM's incremental detokenizer:
decode a short window of ids before and after the last emitted boundary, and emit the difference once it
no longer ends in an incomplete character (U+FFFD from a partial UTF-8 sequence). The emitted pieces add up
to the decoding of all ids, because each window starts where the text so far ended on a whole character.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_REPLACEMENT = "\ufffd"


class IncrementalText:
    def __init__(self, decode: Callable[[Sequence[int]], str], clean: Callable[[str], str] = lambda s: s) -> None:
        self._decode = decode  # ids -> text, with nothing done to the characters
        self._clean = clean  # applied to each emitted piece (the engine writes NUL as U+FFFD)
        self.text = ""  # the decoded text of every id up to ``_read``
        # Whole characters decoded after ``text`` and held back with a partial one (a token can end a stop
        # string and start a multi-byte character): stop strings are matched on ``text + pending``.
        self.pending = ""
        self._prefix = 0  # the window's first id: where the text was last known to end on a whole character
        self._read = 0  # ids already in ``text``

    def add(self, ids: Sequence[int], token: int) -> bool:
        """Take the next ``token`` after ``ids`` (the ids so far, as given before). True when ``text`` grew."""
        window = [*ids[self._prefix :], token]
        done = self._decode(window[: self._read - self._prefix])
        now = self._decode(window)
        if len(now) <= len(done) or now.endswith(_REPLACEMENT):
            # No new character yet, or the last one is still incomplete: hold the piece back.
            self.pending = self._clean(now[len(done) :].rstrip(_REPLACEMENT))
            return False
        self.text += self._clean(now[len(done) :])
        self.pending = ""
        self._prefix, self._read = self._read, len(ids) + 1
        return True
