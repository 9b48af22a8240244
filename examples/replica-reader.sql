-- Terminal 3 of the read-replica demo (see README "Read replicas").
-- Run in the repository directory:  sqlite3 -cmd '.load ./target/release/libpagewire_vfs'
-- mode=ro opens a replica: no write lease; every read transaction reads one version.
.open file:demo/feed.db?mode=ro
select count(*) as posts from posts;
begin;
select id, body from posts order by id;
pragma pagewire_version;
commit;
