"""Why bars are written: the one home of the reason vocabulary (plain Python, no Dagster).

Two vocabularies, each a StrEnum (its members are the strings themselves, so they compare,
hash, print and go to SQL as their text):

- `Revision`: the label a restated or withdrawn bar's previous version gets in
  derived_bar_revisions.reason (contract 9). The engine accepts only these.
- `Reason`: why a run writes bars, as its run tag `agg/reason` says it (the planner's
  reasons, and the few a person or the CLI tags a run with). Each member carries the
  `Revision` its bars' versions are labelled with, so a new reason is one member here: the
  planner, the run tag, the assets' mapping and the history all follow. A tag that names no
  member is an error (`UnknownReasonError`), never a silent "manual".

A run tag is a member's text, optionally followed by details: the planner's late-data runs
say which days and what changed ("late data on 2025-07-01, 2025-07-02: correction").
"""

from __future__ import annotations

from enum import StrEnum


class UnknownReasonError(ValueError):
    """A reason (run tag or revision label) that names no member of the vocabulary."""


class Revision(StrEnum):
    """derived_bar_revisions.reason: why a bar's version was replaced."""

    CATCH_UP = "catch_up"
    LATE_DATA = "late_data"
    CORRECTION = "correction"
    DELETION = "deletion"
    RECONCILIATION = "reconciliation"
    BACKFILL = "backfill"
    REBUILD = "rebuild"  # runbook rebuild_range
    MANUAL = "manual"  # a run with no reason tag, outside a backfill
    LEGACY_CLEANUP = "legacy_cleanup"  # runbook withdraw_legacy_bars

    @classmethod
    def parse(cls, value: object) -> Revision:
        """The member named by `value` (a member or its text); UnknownReasonError else."""
        try:
            return cls(value)
        except ValueError:
            raise UnknownReasonError(
                f"reason={value!r} is not one of {', '.join(cls)}") from None


class Reason(StrEnum):
    """A run's reason: its text (the run tag, the planner's claims), its revision label, and
    what it means (`doc`). Members: `Reason.X`; `Reason.X.revision`; `Reason.X.doc`."""

    revision: Revision
    doc: str

    def __new__(cls, text: str, revision: Revision, doc: str) -> Reason:
        member = str.__new__(cls, text)
        member._value_ = text
        member.revision = revision
        member.doc = doc
        return member

    # the planner's (engine/planning.py)
    CATCH_UP = ("catch-up", Revision.CATCH_UP,
                "the catch-up schedule: every timeframe up to its frontier")
    NEW_WINDOWS = ("new complete windows", Revision.CATCH_UP,
                   "the source frontier sensor: new final windows of the roots")
    FORMING = ("forming bar", Revision.CATCH_UP,
               "the source frontier sensor: a forming bar behind its newest source row")
    LATE_DATA = ("late data", Revision.LATE_DATA,
                 "the late-data sensor: days already built whose source changed")
    RECONCILIATION = ("reconciliation", Revision.RECONCILIATION,
                      "the late-data sensor's fingerprint re-check found a difference")
    # a person's or the CLI's
    CORRECTION = ("correction", Revision.CORRECTION,
                  "tagged by hand: a run re-reading corrected source rows")
    DELETION = ("deletion", Revision.DELETION,
                "tagged by hand: a run re-reading days whose source rows were deleted")
    BACKFILL = ("backfill", Revision.BACKFILL, "tagged by hand: a run re-building a range")
    CLI_BACKFILL = ("cli backfill", Revision.BACKFILL, "agg-pipeline backfill")
    UI_BACKFILL = ("ui backfill", Revision.BACKFILL,
                   "the backfill_bars job, launched from its launchpad")

    @property
    def live(self) -> bool:
        """A live run bringing tasks up to their frontier: it reads from each cursor."""
        return self.revision is Revision.CATCH_UP

    def tag(self, details: str = "") -> str:
        """The run tag's text: the reason, then `details` when there are any."""
        return f"{self} {details}" if details else str(self)

    @classmethod
    def from_tag(cls, text: str) -> Reason:
        """The member a run tag names: its text alone or followed by details (the longest
        member matching wins); UnknownReasonError for anything else."""
        for member in sorted(cls, key=len, reverse=True):
            if text == member or text.startswith((f"{member} ", f"{member}:")):
                return member
        raise UnknownReasonError(
            f"reason {text!r} is not one of {', '.join(repr(str(m)) for m in cls)} "
            "(optionally followed by details); add it to agg_pipeline/engine/reasons.py")


PLANNER_REASONS = (Reason.CATCH_UP, Reason.NEW_WINDOWS, Reason.FORMING, Reason.LATE_DATA,
                   Reason.RECONCILIATION)


def run_revision(tag: str | None, *, backfill: bool) -> Revision:
    """The revision label of a run's bars: its reason tag's when it has one, else backfill
    (a Dagster backfill's run) or manual. A tag naming no reason raises UnknownReasonError."""
    if tag:
        return Reason.from_tag(tag).revision
    return Revision.BACKFILL if backfill else Revision.MANUAL
