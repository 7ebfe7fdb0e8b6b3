-- Whether run %(run_id)s withdrew any legacy bar (an undo of it again restores nothing, an
-- undo of a run id that withdrew nothing is a mistake).
SELECT EXISTS (SELECT 1 FROM derived_bar_revisions
               WHERE reason = %(reason)s AND run_id = %(run_id)s)
