"""Figures tests want shown at the end of the run (match counts and the like)."""

from __future__ import annotations

LINES: list[str] = []


def report(line: str) -> None:
    """Add a line to the "agg_pipeline figures" section of pytest's terminal summary."""
    LINES.append(line)
