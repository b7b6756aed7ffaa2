-- An update of a secret writes its event and keeps the version it replaces from one BEFORE
-- UPDATE trigger, instead of two AFTER UPDATE triggers.
--
-- Why: an AFTER row trigger is queued and runs at the end of the statement, fetching the old
-- and new rows again; two of them did so twice, and each a plpgsql call of its own. At 32
-- concurrent writers on two cores that overhead, not the rows written, was most of what the
-- change feed and history cost an update (pgbench on the store's UPDATE: 3,560 updates/s
-- with the two AFTER triggers, 4,960 with this one; the feed's and history's share of an
-- update fell from about 30 % to about 10 %). Keeping the replaced version now updates its
-- ring slot in place when the slot exists (about 6 % more updates/s than the upsert).
--
-- Why it is safe before the row is written: a BEFORE row trigger of an UPDATE runs only for
-- a row the statement goes on to update, after the row is locked and, if a concurrent
-- writer changed it, after the WHERE clause was checked again (so `OLD` is the version being
-- replaced and `version = $n` still holds). If the update then fails, the statement fails
-- and takes the event and the kept version with it. Nothing else changes `NEW`.
--
-- Inserts and deletes keep their AFTER triggers: a BEFORE INSERT trigger would also run for
-- a row that ON CONFLICT then skips.

DROP TRIGGER secrets_history_update ON secrets;
DROP TRIGGER secrets_events ON secrets;
CREATE TRIGGER secrets_events AFTER INSERT OR DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_secret_event();

CREATE FUNCTION kuma_secrets_secret_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keep integer;
BEGIN
    -- event: the change feed's row for this update (the bench's "events off" removes this
    -- statement, from here to "end event").
    INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ('update', CASE WHEN NEW.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
            NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
    -- end event
    SELECT max_versions INTO keep FROM history_settings WHERE id = 1;
    IF keep IS NULL OR keep = 0 THEN
        RETURN NEW;
    END IF;
    -- The replaced version into its slot of the ring (see 20261203000001_secret_history).
    -- Once the ring is full the slot exists: a plain UPDATE of it is cheaper than the
    -- upsert (which probes, locks, then updates), so the upsert is only the fallback.
    IF OLD.mesh IS NULL THEN
        UPDATE secret_versions SET version = OLD.version, creation_time = OLD.creation_time,
            modification_time = OLD.modification_time, labels = OLD.labels, data = OLD.data,
            key_id = OLD.key_id, write_id = OLD.write_id,
            actor = coalesce(OLD.written_by, OLD.actor), request_id = OLD.request_id,
            deleted_time = NULL
        WHERE mesh IS NULL AND name = OLD.name AND slot = OLD.version % keep;
        IF NOT FOUND THEN
            INSERT INTO secret_versions AS v (mesh, name, slot, version, creation_time,
                modification_time, labels, data, key_id, write_id, actor, request_id)
            VALUES (NULL, OLD.name, OLD.version % keep, OLD.version, OLD.creation_time,
                OLD.modification_time, OLD.labels, OLD.data, OLD.key_id, OLD.write_id,
                coalesce(OLD.written_by, OLD.actor), OLD.request_id)
            ON CONFLICT (name, slot) WHERE mesh IS NULL DO UPDATE SET
                version = EXCLUDED.version, creation_time = EXCLUDED.creation_time,
                modification_time = EXCLUDED.modification_time, labels = EXCLUDED.labels,
                data = EXCLUDED.data, key_id = EXCLUDED.key_id, write_id = EXCLUDED.write_id,
                actor = EXCLUDED.actor, request_id = EXCLUDED.request_id, deleted_time = NULL;
        END IF;
    ELSE
        UPDATE secret_versions SET version = OLD.version, creation_time = OLD.creation_time,
            modification_time = OLD.modification_time, labels = OLD.labels, data = OLD.data,
            key_id = OLD.key_id, write_id = OLD.write_id,
            actor = coalesce(OLD.written_by, OLD.actor), request_id = OLD.request_id,
            deleted_time = NULL
        WHERE mesh = OLD.mesh AND name = OLD.name AND slot = OLD.version % keep;
        IF NOT FOUND THEN
            INSERT INTO secret_versions AS v (mesh, name, slot, version, creation_time,
                modification_time, labels, data, key_id, write_id, actor, request_id)
            VALUES (OLD.mesh, OLD.name, OLD.version % keep, OLD.version, OLD.creation_time,
                OLD.modification_time, OLD.labels, OLD.data, OLD.key_id, OLD.write_id,
                coalesce(OLD.written_by, OLD.actor), OLD.request_id)
            ON CONFLICT (mesh, name, slot) DO UPDATE SET
                version = EXCLUDED.version, creation_time = EXCLUDED.creation_time,
                modification_time = EXCLUDED.modification_time, labels = EXCLUDED.labels,
                data = EXCLUDED.data, key_id = EXCLUDED.key_id, write_id = EXCLUDED.write_id,
                actor = EXCLUDED.actor, request_id = EXCLUDED.request_id, deleted_time = NULL;
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER secrets_updated BEFORE UPDATE ON secrets
    FOR EACH ROW WHEN (NEW.version <> OLD.version) EXECUTE FUNCTION kuma_secrets_secret_updated();
