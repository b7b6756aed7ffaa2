-- Where a federated zone is in its global store's change feed (`src/federation`): the
-- revision of the last change it applied, and which global store that revision is of.
-- A restarted zone goes on after it instead of listing everything again; a zone pointed
-- at another global store lists again. One row at most.
CREATE TABLE zone_sync (
    id       integer     NOT NULL DEFAULT 1,
    global   text        NOT NULL,
    revision bigint      NOT NULL,
    updated  timestamptz NOT NULL,
    CONSTRAINT zone_sync_pkey PRIMARY KEY (id),
    CONSTRAINT zone_sync_one_row CHECK (id = 1),
    CONSTRAINT zone_sync_revision_not_negative CHECK (revision >= 0)
);
