-- Read demo/feed.db as it was at version 2 (its first commit created the table,
-- the second added two posts). Any version still within the server's
-- --history-retention works; as_of_time=2026-11-21T10:00:00Z picks by time.
.open file:demo/feed.db?as_of_version=2
select count(*) as posts_at_version_2 from posts;
