"""The one exception the exporter raises for bad input; the CLI prints it as a single line."""

from __future__ import annotations


class ExportError(Exception):
    """A user-facing failure: missing or corrupt input, mismatched config, parity over tolerance, I/O.

    The message must fit on one line and name the offending file, tensor or figure.
    """
