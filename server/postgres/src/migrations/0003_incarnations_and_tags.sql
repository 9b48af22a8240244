-- Database identity: every database gets an incarnation (16 random bytes chosen at
-- create, never reused), every version a tag (16 random bytes chosen at commit; 16 zero
-- bytes for version 0). A client names them with the versions it holds, so that a
-- database deleted and created again, or restored from a backup, is never taken for the
-- one it saw.
--
-- databases.tag is the tag of databases.version (the newest version), written by the
-- same UPDATE that moves the version: every statement that reads the database row (a
-- commit, an open, a lease grant, a BeginRead) has the newest state's identity with no
-- join and no extra query. versions.tag stays the record of every kept version.
--
-- Existing rows get random values. md5 of random(), the clock and the row's key works on
-- every PostgreSQL version without an extension; the key in the input makes the values
-- distinct within this migration (distinct inputs), and random() and the clock make them
-- differ from those of any other run of it (say, on a restored backup taken before it).

ALTER TABLE pagewire.versions ADD COLUMN tag bytea;
UPDATE pagewire.versions
SET tag = CASE WHEN version = 0 THEN decode(repeat('00', 16), 'hex')
               ELSE decode(md5(random()::text || clock_timestamp()::text || 'v' || db_id::text
                               || '.' || version::text), 'hex') END;
ALTER TABLE pagewire.versions ALTER COLUMN tag SET NOT NULL;
ALTER TABLE pagewire.versions ADD CONSTRAINT versions_tag_16 CHECK (octet_length(tag) = 16);

ALTER TABLE pagewire.databases ADD COLUMN incarnation bytea, ADD COLUMN tag bytea;
UPDATE pagewire.databases AS d
SET incarnation = decode(md5(random()::text || clock_timestamp()::text || 'd' || d.id::text), 'hex'),
    tag = coalesce(
      (SELECT v.tag FROM pagewire.versions AS v WHERE v.db_id = d.id AND v.version = d.version),
      -- (the newest version always has its row; were it missing, no client could have
      -- been told a tag for it)
      CASE WHEN d.version = 0 THEN decode(repeat('00', 16), 'hex')
           ELSE decode(md5(random()::text || clock_timestamp()::text || 'n' || d.id::text), 'hex') END);
ALTER TABLE pagewire.databases ALTER COLUMN incarnation SET NOT NULL,
                               ALTER COLUMN tag SET NOT NULL,
                               ADD CONSTRAINT databases_incarnation_16 CHECK (octet_length(incarnation) = 16),
                               ADD CONSTRAINT databases_tag_16 CHECK (octet_length(tag) = 16);
