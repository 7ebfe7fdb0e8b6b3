-- The built UTC days of synthetic series (migration 017) that read the given component days
-- (parallel arrays %(components)s, %(days)s): those whose recorded input span of that
-- component, [covered_from, covered_through), overlaps the component's day, i.e. the same
-- day and, through the forward fill, the next. For the reconciliation, which found those
-- component days changed around the capture.
SELECT DISTINCT i.canonical_symbol, i.day
FROM unnest(%(components)s::text[], %(days)s::date[]) AS changed(component, day)
JOIN data_agg_synthetic_inputs i
  ON i.component = changed.component
 AND i.covered_from < (changed.day + 1)::timestamp AT TIME ZONE 'UTC'
 AND i.covered_through > changed.day::timestamp AT TIME ZONE 'UTC'
JOIN v_agg_synthetic_series v ON v.canonical_symbol = i.canonical_symbol
ORDER BY 1, 2
