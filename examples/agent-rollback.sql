-- An agent's database, rolled back after the agent went wrong. Run with the server
-- from the Quick Start: sqlite3 -cmd '.load ./target/release/libpagewire_vfs' < examples/agent-rollback.sql
.open demo/agent.db
drop table if exists memory;
create table memory(id integer primary key, fact text);
insert into memory(fact) values ('the user prefers metric units'), ('the deadline is Friday');

-- Before handing the database to the agent: a named point.
pragma pagewire_restore_point='before-run-1';

-- The agent runs... and makes a mess.
delete from memory;
insert into memory(fact) values ('the deadline is whenever');
select 'after the agent:', count(*) from memory;

-- Undo everything it did: the state at the point becomes the newest version.
pragma pagewire_restore='before-run-1';
select 'rolled back:', fact from memory order by id;

-- The rollback is itself a version, so it can be undone too; points are kept
-- until dropped, past the history retention window.
pragma pagewire_restore_points;
pragma pagewire_drop_restore_point='before-run-1';
