-- The first schema of the PostgreSQL page store. Every number a client sends as u32 or
-- u64 is stored as bigint; page data is bytea.

-- One row per database: its identity, and its newest state, so a commit or a lease
-- grant locks this row (serialising writers of the database) and reads it in one step.
CREATE TABLE pagewire.databases (
    id                   bigserial PRIMARY KEY,
    tenant               text NOT NULL,
    name                 text NOT NULL,
    created_unix_ms      bigint NOT NULL,
    version              bigint NOT NULL DEFAULT 0,
    page_size            bigint NOT NULL DEFAULT 0,
    page_count           bigint NOT NULL DEFAULT 0,
    -- commit time of the newest version (creation time while empty)
    updated_unix_ms      bigint NOT NULL,
    -- bytes of page data over all retained writes
    stored_bytes         bigint NOT NULL DEFAULT 0,
    -- commit time of version 1 (kept through GC: "before the first commit" vs "collected")
    first_commit_unix_ms bigint,
    -- highest lease epoch ever granted: epochs are never reused
    max_epoch            bigint NOT NULL DEFAULT 0,
    -- retention of the GC pass that last collected something (for messages)
    gc_retention_ms      bigint,
    UNIQUE (tenant, name)
);

-- The write lease of a database (at most one; kept after expiry until replaced).
-- Times are the database's clock (clock_timestamp()), shared by every server.
CREATE TABLE pagewire.leases (
    db_id      bigint PRIMARY KEY,
    lease_id   bytea NOT NULL,
    epoch      bigint NOT NULL,
    client_id  text NOT NULL,
    ttl_ms     bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Version metadata. Rows below the oldest kept version are deleted by GC; rows of
-- collected versions above it stay (retained = false) for change lists.
CREATE TABLE pagewire.versions (
    db_id             bigint NOT NULL,
    version           bigint NOT NULL,
    committed_unix_ms bigint NOT NULL,
    page_size         bigint NOT NULL,
    page_count        bigint NOT NULL,
    -- pages this version wrote, and every page past the old end when it grew; ascending
    changed_pages     bigint[] NOT NULL,
    retained          boolean NOT NULL DEFAULT true,
    PRIMARY KEY (db_id, version)
);

-- Page writes, copy-on-write per page. A page at version V is the newest write at a
-- version <= V; data NULL is a zero page (a hole left when the file grew over pages an
-- older version had written before a truncate); no row at all reads as zeros too.
CREATE TABLE pagewire.pages (
    db_id   bigint NOT NULL,
    page_no bigint NOT NULL,
    version bigint NOT NULL,
    data    bytea,
    PRIMARY KEY (db_id, page_no, version)
);

-- Commit ids of applied commits, so a retry learns its outcome (the newest 1024 per
-- database are kept).
CREATE TABLE pagewire.commit_ids (
    db_id     bigint NOT NULL,
    commit_id bytea NOT NULL,
    version   bigint NOT NULL,
    PRIMARY KEY (db_id, commit_id)
);
CREATE INDEX commit_ids_by_version ON pagewire.commit_ids (db_id, version);

-- Reader pins: a pinned version is safe from GC until expires_at (database clock).
CREATE TABLE pagewire.pins (
    db_id      bigint NOT NULL,
    version    bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (db_id, version)
);
