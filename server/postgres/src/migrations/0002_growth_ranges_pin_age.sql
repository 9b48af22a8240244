-- Change lists record growth as a range, and pins have an age limit.
--
-- Until now a version that grew the file listed every page past the old end in
-- changed_pages (a commit claiming four billion pages built a list of four billion).
-- From now on changed_pages holds only the pages the commit carried below the old end,
-- and grown_from the first page past the old end (old page_count + 1; NULL: no growth),
-- meaning "every page numbered grown_from or higher changed".
ALTER TABLE pagewire.versions ADD COLUMN grown_from bigint;

-- Lists already stored: a version that grew over its predecessor row gets its range, and
-- loses the enumerated pages the range covers. A version without a predecessor row (the
-- oldest kept one after GC, or version 0) keeps its list: a change-list walk only ever
-- starts at it, and never reads the list of the version it starts at.
UPDATE pagewire.versions AS v
SET grown_from = p.page_count + 1,
    changed_pages = ARRAY(SELECT x FROM unnest(v.changed_pages) AS x
                          WHERE x <= p.page_count ORDER BY x)
FROM pagewire.versions AS p
WHERE p.db_id = v.db_id AND p.version = v.version - 1 AND v.page_count > p.page_count;

-- When a pin was made (database clock): a pin is never extended past
-- created_at + the server's maximum pin age. Pins that exist now count as made now.
ALTER TABLE pagewire.pins
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT clock_timestamp();
