-- Version history: every update keeps the version it replaces, and a delete keeps the
-- deleted secret's versions for a while, so a bad rotation can be rolled back and a
-- mistaken delete undone. Written by triggers in the writing statement, so every write
-- path (API, import, copy, rollback, restore) keeps history. See the Postgres migration of
-- the same name for the rules; these triggers are the same rules in SQLite's syntax.

-- Who wrote the current version, kept when a delete stamps its own actor on the row (see
-- the Postgres migration).
ALTER TABLE secrets ADD COLUMN written_by TEXT;

CREATE TABLE secret_versions (
    id                INTEGER NOT NULL,
    mesh              TEXT,
    name              TEXT    NOT NULL,
    -- version % max_versions: the history of a secret is a ring of max_versions slots.
    slot              INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    creation_time     TEXT    NOT NULL,
    modification_time TEXT    NOT NULL,
    labels            TEXT    NOT NULL,
    data              BLOB    NOT NULL,
    key_id            TEXT,
    write_id          BLOB,
    actor             TEXT,
    request_id        TEXT,
    deleted_time      TEXT,

    CONSTRAINT secret_versions_pkey PRIMARY KEY (id),
    CONSTRAINT secret_versions_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name) ON DELETE CASCADE,
    CONSTRAINT secret_versions_slot_key UNIQUE (mesh, name, slot)
) STRICT;
CREATE UNIQUE INDEX secret_versions_global_slot_key ON secret_versions (name, slot) WHERE mesh IS NULL;
CREATE INDEX secret_versions_deleted_idx ON secret_versions (deleted_time) WHERE deleted_time IS NOT NULL;

CREATE TABLE history_settings (
    id           INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    max_versions INTEGER NOT NULL CHECK (max_versions >= 0)
) STRICT;
INSERT INTO history_settings (id, max_versions) VALUES (1, 10);

CREATE TRIGGER secrets_history_insert AFTER INSERT ON secrets BEGIN
    DELETE FROM secret_versions
    WHERE mesh IS NEW.mesh AND name = NEW.name AND deleted_time IS NOT NULL;
END;

-- The replaced version into its slot of the ring (one trigger per kind of key: a Secret's
-- slot is unique per (mesh, name), a GlobalSecret's per name).
CREATE TRIGGER secrets_history_update AFTER UPDATE ON secrets
WHEN NEW.version <> OLD.version AND OLD.mesh IS NOT NULL AND (SELECT max_versions FROM history_settings WHERE id = 1) > 0 BEGIN
    INSERT INTO secret_versions (mesh, name, slot, version, creation_time,
        modification_time, labels, data, key_id, write_id, actor, request_id)
    VALUES (OLD.mesh, OLD.name, OLD.version % (SELECT max_versions FROM history_settings WHERE id = 1),
            OLD.version, OLD.creation_time, OLD.modification_time, OLD.labels, OLD.data,
            OLD.key_id, OLD.write_id, coalesce(OLD.written_by, OLD.actor), OLD.request_id)
    ON CONFLICT (mesh, name, slot) DO UPDATE SET
        version = excluded.version, creation_time = excluded.creation_time,
        modification_time = excluded.modification_time, labels = excluded.labels,
        data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id,
        actor = excluded.actor, request_id = excluded.request_id, deleted_time = NULL;
END;

CREATE TRIGGER secrets_history_update_global AFTER UPDATE ON secrets
WHEN NEW.version <> OLD.version AND OLD.mesh IS NULL AND (SELECT max_versions FROM history_settings WHERE id = 1) > 0 BEGIN
    INSERT INTO secret_versions (mesh, name, slot, version, creation_time,
        modification_time, labels, data, key_id, write_id, actor, request_id)
    VALUES (NULL, OLD.name, OLD.version % (SELECT max_versions FROM history_settings WHERE id = 1),
            OLD.version, OLD.creation_time, OLD.modification_time, OLD.labels, OLD.data,
            OLD.key_id, OLD.write_id, coalesce(OLD.written_by, OLD.actor), OLD.request_id)
    ON CONFLICT (name, slot) WHERE mesh IS NULL DO UPDATE SET
        version = excluded.version, creation_time = excluded.creation_time,
        modification_time = excluded.modification_time, labels = excluded.labels,
        data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id,
        actor = excluded.actor, request_id = excluded.request_id, deleted_time = NULL;
END;

-- A deleted secret's versions, the deleted one included, are kept with their deletion
-- time. A Mesh delete cascades here after the Mesh row is gone: nothing is kept then.
CREATE TRIGGER secrets_history_delete AFTER DELETE ON secrets
WHEN OLD.mesh IS NOT NULL AND (SELECT max_versions FROM history_settings WHERE id = 1) > 0
 AND EXISTS (SELECT 1 FROM meshes WHERE name = OLD.mesh) BEGIN
    INSERT INTO secret_versions (mesh, name, slot, version, creation_time,
        modification_time, labels, data, key_id, write_id, actor, request_id)
    VALUES (OLD.mesh, OLD.name, OLD.version % (SELECT max_versions FROM history_settings WHERE id = 1),
            OLD.version, OLD.creation_time, OLD.modification_time, OLD.labels, OLD.data,
            OLD.key_id, OLD.write_id, coalesce(OLD.written_by, OLD.actor), OLD.request_id)
    ON CONFLICT (mesh, name, slot) DO UPDATE SET
        version = excluded.version, creation_time = excluded.creation_time,
        modification_time = excluded.modification_time, labels = excluded.labels,
        data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id,
        actor = excluded.actor, request_id = excluded.request_id, deleted_time = NULL;
    UPDATE secret_versions SET deleted_time = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE mesh IS OLD.mesh AND name = OLD.name;
END;

CREATE TRIGGER secrets_history_delete_global AFTER DELETE ON secrets
WHEN OLD.mesh IS NULL AND (SELECT max_versions FROM history_settings WHERE id = 1) > 0 BEGIN
    INSERT INTO secret_versions (mesh, name, slot, version, creation_time,
        modification_time, labels, data, key_id, write_id, actor, request_id)
    VALUES (NULL, OLD.name, OLD.version % (SELECT max_versions FROM history_settings WHERE id = 1),
            OLD.version, OLD.creation_time, OLD.modification_time, OLD.labels, OLD.data,
            OLD.key_id, OLD.write_id, coalesce(OLD.written_by, OLD.actor), OLD.request_id)
    ON CONFLICT (name, slot) WHERE mesh IS NULL DO UPDATE SET
        version = excluded.version, creation_time = excluded.creation_time,
        modification_time = excluded.modification_time, labels = excluded.labels,
        data = excluded.data, key_id = excluded.key_id, write_id = excluded.write_id,
        actor = excluded.actor, request_id = excluded.request_id, deleted_time = NULL;
    UPDATE secret_versions SET deleted_time = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE mesh IS OLD.mesh AND name = OLD.name;
END;
