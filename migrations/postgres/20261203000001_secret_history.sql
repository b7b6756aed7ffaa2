-- Version history: every update keeps the version it replaces, and a delete keeps the
-- deleted secret's versions for a while, so a bad rotation can be rolled back and a
-- mistaken delete undone. Written by triggers in the writing statement, so every write
-- path (API, import, copy, rollback, restore) keeps history without a second round trip.
--
-- A history row is the replaced `secrets` row as it was: its sealed `data` with the
-- `write_id` it was sealed with, so it opens under the same binding (the secret's identity
-- and that write), and a value moved into another secret's or version's row does not open.
--
-- The history of a secret is a ring of `max_versions` slots: version V goes into slot
-- V % max_versions, replacing the version `max_versions` before it. So keeping a version
-- is one upsert of a row that already exists (a heap-only update once the ring is full:
-- no index entry, no delete), not an insert and a delete per write.

-- Who wrote the current version, kept when a delete stamps its own actor on the row (for
-- the delete event): the deleted version is kept with its writer, not its deleter. Set
-- only by that stamp, in the deleting transaction.
ALTER TABLE secrets ADD COLUMN written_by jsonb;

CREATE TABLE secret_versions (
    -- Batch boundaries for key rotation.
    id                bigint GENERATED ALWAYS AS IDENTITY,
    mesh              text COLLATE "C",
    name              text COLLATE "C" NOT NULL,
    -- version % max_versions.
    slot              integer          NOT NULL,
    version           bigint           NOT NULL,
    creation_time     timestamptz      NOT NULL,
    modification_time timestamptz      NOT NULL,
    labels            jsonb            NOT NULL,
    data              bytea            NOT NULL,
    key_id            text COLLATE "C",
    write_id          bytea,
    actor             jsonb,
    request_id        text,
    -- Set on every version of a deleted secret: when it was deleted. Such history is kept
    -- for the deleted-retention period, then pruned.
    deleted_time      timestamptz,

    CONSTRAINT secret_versions_pkey PRIMARY KEY (id),
    -- Deleting a Mesh deletes its secrets' histories in the same statement.
    CONSTRAINT secret_versions_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name) ON DELETE CASCADE,
    CONSTRAINT secret_versions_slot_key UNIQUE (mesh, name, slot)
) WITH (fillfactor = 50);  -- room on each page for the heap-only updates of the ring
CREATE UNIQUE INDEX secret_versions_global_slot_key ON secret_versions (name, slot) WHERE mesh IS NULL;
CREATE INDEX secret_versions_deleted_idx ON secret_versions (deleted_time) WHERE deleted_time IS NOT NULL;

-- How many earlier versions each secret keeps (0: no history, deletes are final). One row;
-- `serve --max-versions` sets it.
CREATE TABLE history_settings (
    id           integer NOT NULL,
    max_versions integer NOT NULL,
    CONSTRAINT history_settings_pkey PRIMARY KEY (id),
    CONSTRAINT history_settings_one_row CHECK (id = 1),
    CONSTRAINT history_settings_max_versions CHECK (max_versions >= 0)
);
INSERT INTO history_settings (id, max_versions) VALUES (1, 10);

CREATE FUNCTION kuma_secrets_keep_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keep integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A new secret with a deleted one's name starts a fresh history: the deleted
        -- secret's versions go (restore it first to keep them). A restore clears
        -- `deleted_time` before it inserts, so its history stays.
        IF NEW.mesh IS NULL THEN
            DELETE FROM secret_versions
            WHERE mesh IS NULL AND name = NEW.name AND deleted_time IS NOT NULL;
        ELSE
            DELETE FROM secret_versions
            WHERE mesh = NEW.mesh AND name = NEW.name AND deleted_time IS NOT NULL;
        END IF;
        RETURN NULL;
    END IF;
    SELECT max_versions INTO keep FROM history_settings WHERE id = 1;
    IF keep IS NULL OR keep = 0 THEN
        RETURN NULL;
    END IF;
    -- A Mesh delete cascades here after the Mesh row is gone: its secrets' histories go
    -- with it, so keep nothing.
    IF TG_OP = 'DELETE' AND OLD.mesh IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM meshes WHERE name = OLD.mesh) THEN
        RETURN NULL;
    END IF;
    -- The replaced (or deleted) version into its slot of the ring.
    IF OLD.mesh IS NULL THEN
        INSERT INTO secret_versions AS v (mesh, name, slot, version, creation_time,
            modification_time, labels, data, key_id, write_id, actor, request_id)
        VALUES (NULL, OLD.name, OLD.version % keep, OLD.version, OLD.creation_time,
            OLD.modification_time, OLD.labels, OLD.data, OLD.key_id, OLD.write_id,
            coalesce(OLD.written_by, OLD.actor),
            OLD.request_id)
        ON CONFLICT (name, slot) WHERE mesh IS NULL DO UPDATE SET
            version = EXCLUDED.version, creation_time = EXCLUDED.creation_time,
            modification_time = EXCLUDED.modification_time, labels = EXCLUDED.labels,
            data = EXCLUDED.data, key_id = EXCLUDED.key_id, write_id = EXCLUDED.write_id,
            actor = EXCLUDED.actor, request_id = EXCLUDED.request_id, deleted_time = NULL;
        IF TG_OP = 'DELETE' THEN
            UPDATE secret_versions SET deleted_time = now()
            WHERE mesh IS NULL AND name = OLD.name;
        END IF;
    ELSE
        INSERT INTO secret_versions AS v (mesh, name, slot, version, creation_time,
            modification_time, labels, data, key_id, write_id, actor, request_id)
        VALUES (OLD.mesh, OLD.name, OLD.version % keep, OLD.version, OLD.creation_time,
            OLD.modification_time, OLD.labels, OLD.data, OLD.key_id, OLD.write_id,
            coalesce(OLD.written_by, OLD.actor),
            OLD.request_id)
        ON CONFLICT (mesh, name, slot) DO UPDATE SET
            version = EXCLUDED.version, creation_time = EXCLUDED.creation_time,
            modification_time = EXCLUDED.modification_time, labels = EXCLUDED.labels,
            data = EXCLUDED.data, key_id = EXCLUDED.key_id, write_id = EXCLUDED.write_id,
            actor = EXCLUDED.actor, request_id = EXCLUDED.request_id, deleted_time = NULL;
        IF TG_OP = 'DELETE' THEN
            UPDATE secret_versions SET deleted_time = now()
            WHERE mesh = OLD.mesh AND name = OLD.name;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER secrets_history_insert AFTER INSERT ON secrets
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_keep_history();
CREATE TRIGGER secrets_history_update AFTER UPDATE ON secrets
    FOR EACH ROW WHEN (NEW.version <> OLD.version) EXECUTE FUNCTION kuma_secrets_keep_history();
CREATE TRIGGER secrets_history_delete AFTER DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_keep_history();
