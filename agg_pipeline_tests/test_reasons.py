"""The reason vocabulary (engine/reasons.py): every planner reason reaches a revision label
through the run tag, and a reason nobody declared is an error, never a silent 'manual'.
No database needed."""

from __future__ import annotations

import sys
from datetime import date

import pytest

from agg_pipeline.defs.assets import reads_incrementally, run_reason
from agg_pipeline.defs.requests import run_request
from agg_pipeline.defs.tags import BACKFILL_TAG, LANE_TAG, LIVE_LANE, REASON_TAG
from agg_pipeline.engine import planning
from agg_pipeline.engine.reasons import (
    PLANNER_REASONS,
    Reason,
    Revision,
    UnknownReasonError,
    run_revision,
)

DAY = date(2025, 7, 2)


def _run(reason: Reason, *, days: int = 1, causes: frozenset[str] = frozenset()
         ) -> planning.PlannedRun:
    """A run as the planner makes it, its reason tag from the planner's own wording."""
    changed = frozenset(date(2025, 7, d) for d in range(2, 2 + days))
    work = planning.Work("EURUSD", ("5m", "1h"), min(changed), max(changed), reason, (0,),
                         causes, changed if reason is Reason.LATE_DATA else frozenset())
    tag = planning._reason(reason, [work], work.first_day, work.last_day)
    return planning.PlannedRun("test-plan", ("EURUSD",), work.first_day, work.last_day,
                               ("5m", "1h"), tag, (work,), (0,))


def test_every_planner_reason_has_a_revision_label():
    assert set(PLANNER_REASONS) <= set(Reason)
    for reason in Reason:
        assert isinstance(reason.revision, Revision), reason
        assert reason.doc
    # what planning.py produces (catchup_work, forming_work, late_work, reconciliation_work)
    assert {Reason.CATCH_UP, Reason.NEW_WINDOWS, Reason.FORMING, Reason.LATE_DATA,
            Reason.RECONCILIATION} == set(PLANNER_REASONS)


@pytest.mark.parametrize("reason", PLANNER_REASONS, ids=str)
@pytest.mark.parametrize("days, causes", [
    (1, frozenset()),
    (2, frozenset({planning.LATE_ROWS})),
    (5, frozenset({Reason.CORRECTION, Reason.DELETION, Reason.RECONCILIATION})),
], ids=["plain", "late-rows", "five-days-corrected"])
def test_planner_reason_round_trips_through_the_run_tag(reason, days, causes):
    tags = run_request(_run(reason, days=days, causes=causes)).tags
    assert tags[LANE_TAG] == LIVE_LANE
    assert tags[REASON_TAG].startswith(str(reason))
    assert Reason.from_tag(tags[REASON_TAG]) is reason
    assert run_reason(tags) is reason.revision
    # live catch-up (schedule, frontier sensor, forming bar) reads from each cursor
    assert reads_incrementally(tags) is (reason.revision is Revision.CATCH_UP)


def test_late_data_tag_keeps_its_details():
    tag = run_request(_run(Reason.LATE_DATA, days=5, causes=frozenset(
        {Reason.CORRECTION, planning.LATE_ROWS}))).tags[REASON_TAG]
    assert tag == "late data on 2025-07-02 .. 2025-07-06 (5 days): correction"
    assert run_revision(tag, backfill=False) is Revision.LATE_DATA


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_every_reason_parses_from_its_tag(reason):
    assert Reason.from_tag(reason.tag()) is reason
    assert Reason.from_tag(reason.tag("on 2025-07-01")) is reason
    assert Reason.from_tag(f"{reason}: details") is reason


def test_runs_without_a_reason_tag():
    assert run_reason({}) is Revision.MANUAL
    assert run_reason({BACKFILL_TAG: "abc"}) is Revision.BACKFILL
    assert run_reason({REASON_TAG: "", BACKFILL_TAG: "abc"}) is Revision.BACKFILL
    # the CLI backfill's in-process runs (backfill.NO_RETRY_TAGS) carry no Dagster backfill tag
    from agg_pipeline.backfill import NO_RETRY_TAGS
    assert run_reason(dict(NO_RETRY_TAGS)) is Revision.BACKFILL
    # a reason tag wins over the backfill tag, as before
    assert run_reason({REASON_TAG: "late data on 2025-07-01", BACKFILL_TAG: "x"}) == "late_data"


@pytest.mark.parametrize("tag", ["late", "catch-upx", "whim", "Late data", "latedata"])
def test_unknown_reason_tag_is_an_error(tag):
    with pytest.raises(UnknownReasonError, match="is not one of"):
        run_reason({REASON_TAG: tag})
    with pytest.raises(UnknownReasonError):
        reads_incrementally({LANE_TAG: LIVE_LANE, REASON_TAG: tag})


def test_revision_labels():
    # the values the engine writes to derived_bar_revisions.reason (history shows them)
    assert [str(r) for r in Revision] == [
        "catch_up", "late_data", "correction", "deletion", "reconciliation", "backfill",
        "rebuild", "manual", "legacy_cleanup"]
    assert Revision.parse("late_data") is Revision.LATE_DATA
    assert Revision.parse(Revision.REBUILD) is Revision.REBUILD
    for bad in ("whim", "late data", None, 3):
        with pytest.raises(UnknownReasonError, match="is not one of"):
            Revision.parse(bad)


def test_reason_texts_are_unambiguous():
    texts = [str(r) for r in Reason]
    assert len(set(texts)) == len(texts)
    # no text is another's text followed by a separator (the tag parser would be ambiguous)
    for a in texts:
        for b in texts:
            assert a == b or not b.startswith((f"{a} ", f"{a}:")), (a, b)


def test_engine_module_does_not_import_dagster():
    import subprocess
    code = ("import sys, agg_pipeline.engine.reasons, agg_pipeline.engine.planning; "
            "sys.exit('dagster' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
