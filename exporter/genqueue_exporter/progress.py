"""Progress bars for the trainers: live on a terminal, a few lines in a log."""

from __future__ import annotations

import sys

from tqdm import tqdm


def training_bar(steps: int, desc: str, enabled: bool) -> tqdm[int]:
    """A bar over ``range(steps)``. On a terminal it redraws ten times a second; written to a file or a CI log
    (no TTY) it prints about every 15 s, since every redraw there is another line of output (a 2500-step run
    wrote ~3000 lines when each step refreshed it). Update its figures with ``set_postfix(..., refresh=False)``:
    a refreshing postfix redraws on every step whatever the interval."""
    tty = sys.stderr.isatty()
    return tqdm(range(steps), desc=desc, disable=not enabled, unit="step", mininterval=0.1 if tty else 15.0)
