-- Terminal 2 of the read-replica demo (see README "Read replicas").
-- Run in the repository directory:  sqlite3 -cmd '.load ./target/release/libpagewire_vfs'
.open demo/feed.db
create table if not exists posts(id integer primary key, body text, at text default (datetime('now')));
begin immediate;
insert into posts(body) values ('hello from the writer');
insert into posts(body) values ('a second post, same transaction');
commit;
-- The version this commit created: give it to replicas as min_version for read-your-writes.
pragma pagewire_version;
