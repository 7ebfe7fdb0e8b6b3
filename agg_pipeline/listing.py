"""Names summarised for one readable line: logs, metadata and messages stay short whatever
the number of symbols (a run of 10,000 symbols is not a 100,000-character line)."""

from __future__ import annotations

from collections.abc import Sequence

# All names when they fit in ALL_CHARS, else those that fit in SOME_CHARS and a count.
ALL_CHARS, SOME_CHARS = 60, 40


def summarise(names: Sequence[str], noun: str = "symbols") -> str:
    """`8 symbols: DXY, EURUSD, ...`, or `1000 symbols: AAA, AAB, ... (+992 more)`;
    `none` when there are none."""
    if not names:
        return f"no {noun}"
    label = noun[:-1] if len(names) == 1 and noun.endswith("s") else noun
    if len(", ".join(names)) <= ALL_CHARS:
        return f"{len(names)} {label}: {', '.join(names)}"
    shown = [names[0]]
    for name in names[1:]:
        if len(", ".join([*shown, name])) > SOME_CHARS:
            break
        shown.append(name)
    return f"{len(names)} {label}: {', '.join(shown)}, ... (+{len(names) - len(shown)} more)"


# A tick's or command's log lists at most this many items of one kind, then a count.
LOG_LINES = 5


def capped(lines: Sequence[str], noun: str, limit: int = LOG_LINES) -> list[str]:
    """The first `limit` of `lines`, then `... and N more <noun>` when there are more: a
    sensor tick over 1,000 symbols logs a few lines, not 1,000."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit} more {noun}"]
