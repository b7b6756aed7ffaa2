-- The change feed and audit trail: one row in `events` per committed change to a Secret,
-- GlobalSecret or Mesh, written by triggers in the same transaction as the change.
-- `actor` and `request_id` travel with the row (a delete sets them just before deleting).
-- Key rotation does not change `version` and is no event.
--
-- Commit order: SQLite has one writer at a time, so the revision is assigned in the
-- writing transaction itself (the highest so far, plus one): commit order is revision
-- order.

ALTER TABLE secrets ADD COLUMN actor TEXT;
ALTER TABLE secrets ADD COLUMN request_id TEXT;
ALTER TABLE meshes ADD COLUMN actor TEXT;
ALTER TABLE meshes ADD COLUMN request_id TEXT;

CREATE TABLE events (
    revision      INTEGER NOT NULL,
    time          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    operation     TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    mesh          TEXT,
    name          TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    actor         TEXT,
    request_id    TEXT,

    CONSTRAINT events_pkey PRIMARY KEY (revision),
    CONSTRAINT events_operation_known CHECK (operation IN ('create', 'update', 'delete')),
    CONSTRAINT events_type_known CHECK (resource_type IN ('Secret', 'GlobalSecret', 'Mesh'))
);

CREATE INDEX events_time_idx ON events (time);

-- Revisions continue after pruning: the next one is one above the highest ever given,
-- kept here so an emptied table does not start again at 1.
CREATE TABLE events_sequence (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO events_sequence (id, last) VALUES (1, 0);

CREATE TRIGGER secrets_insert_event AFTER INSERT ON secrets BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'create',
            CASE WHEN NEW.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
            NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER secrets_update_event AFTER UPDATE ON secrets
WHEN NEW.version <> OLD.version BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'update',
            CASE WHEN NEW.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
            NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER secrets_delete_event AFTER DELETE ON secrets BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'delete',
            CASE WHEN OLD.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
            OLD.mesh, OLD.name, OLD.version, OLD.actor, OLD.request_id);
END;

CREATE TRIGGER meshes_insert_event AFTER INSERT ON meshes BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'create', 'Mesh', NULL,
            NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER meshes_update_event AFTER UPDATE ON meshes
WHEN NEW.version <> OLD.version BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'update', 'Mesh', NULL,
            NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER meshes_delete_event AFTER DELETE ON meshes BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'delete', 'Mesh', NULL,
            OLD.name, OLD.version, OLD.actor, OLD.request_id);
END;
