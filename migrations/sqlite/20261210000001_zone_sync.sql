-- Where a federated zone is in its global store's change feed (`src/federation`): the
-- revision of the last change it applied, and which global store that revision is of.
-- A restarted zone goes on after it instead of listing everything again; a zone pointed
-- at another global store lists again. One row at most.
CREATE TABLE zone_sync (
    id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    global   TEXT    NOT NULL,
    revision INTEGER NOT NULL CHECK (revision >= 0),
    -- RFC 3339, as every time in this schema.
    updated  TEXT    NOT NULL
) STRICT;
