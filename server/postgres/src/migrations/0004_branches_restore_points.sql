-- Branches and restore points.
--
-- A branch (ForkDatabase) is a database row whose pages 1..=inherited_pages, while it
-- has not written them (no row in pages for that page at or before the version read),
-- read through to database ancestor_id at ancestor_version; that version is kept by GC
-- while the branch exists. depth counts the branches between it and its root.
--
-- A deleted database that branches still read keeps its row with name NULL (detached:
-- no name, not listed, its name free for a new database; UNIQUE (tenant, name) allows
-- any number of NULL names) and its pages, until its last branch is deleted.
ALTER TABLE pagewire.databases
    ADD COLUMN ancestor_id      bigint,
    ADD COLUMN ancestor_version bigint,
    ADD COLUMN inherited_pages  bigint NOT NULL DEFAULT 0,
    ADD COLUMN depth            integer NOT NULL DEFAULT 0,
    ALTER COLUMN name DROP NOT NULL;
CREATE INDEX databases_by_ancestor ON pagewire.databases (ancestor_id, ancestor_version)
    WHERE ancestor_id IS NOT NULL;

-- Named pins: a restore point keeps its version readable until it is deleted.
CREATE TABLE pagewire.restore_points (
    db_id           bigint NOT NULL,
    label           text NOT NULL,
    version         bigint NOT NULL,
    tag             bytea NOT NULL,
    created_unix_ms bigint NOT NULL,
    PRIMARY KEY (db_id, label)
);
