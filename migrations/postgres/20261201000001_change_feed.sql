-- The change feed and audit trail: one row in `events` per committed change to a Secret,
-- GlobalSecret or Mesh, written by triggers in the same transaction as the change, so no
-- write path (API, import, cascaded deletes, generated CAs) can forget one.
--
-- Who made a change travels with the row: every write sets `actor` (JSON: name and
-- groups) and `request_id`, and a delete sets them just before deleting, so the trigger
-- copies them into the event. Key rotation rewrites `data` without changing `version`,
-- and is no event.
--
-- Commit order: `revision` is NULL when the event is inserted, and is assigned after
-- commit by the store's sequencer: one at a time (an advisory lock), each run numbering
-- every committed event it can see that has no revision yet, above the highest revision
-- given so far. An event is numbered only once it is visible, that is committed, and
-- everything numbered later gets a higher revision: so a reader that has consumed up to R
-- never later finds an event at or below R, however the writers' commits interleave
-- (numbering at insert time would let a slow writer's event land below R). Writers take
-- no shared lock; readers run the sequencer before they read.

ALTER TABLE secrets ADD COLUMN actor jsonb;
ALTER TABLE secrets ADD COLUMN request_id text;
ALTER TABLE meshes ADD COLUMN actor jsonb;
ALTER TABLE meshes ADD COLUMN request_id text;

CREATE TABLE events (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    revision      bigint,
    time          timestamptz NOT NULL DEFAULT now(),
    operation     text        NOT NULL,
    resource_type text        NOT NULL,
    mesh          text,
    name          text        NOT NULL,
    version       bigint      NOT NULL,
    actor         jsonb,
    request_id    text,

    CONSTRAINT events_pkey PRIMARY KEY (id),
    CONSTRAINT events_operation_known CHECK (operation IN ('create', 'update', 'delete')),
    CONSTRAINT events_type_known CHECK (resource_type IN ('Secret', 'GlobalSecret', 'Mesh'))
);

-- The highest revision ever given: numbering continues from here even after retention has
-- pruned every event. One row; the sequencer holds an advisory lock while it numbers.
CREATE TABLE events_sequencer (
    id   integer NOT NULL,
    last bigint  NOT NULL,
    CONSTRAINT events_sequencer_pkey PRIMARY KEY (id),
    CONSTRAINT events_sequencer_one_row CHECK (id = 1)
);
INSERT INTO events_sequencer (id, last) VALUES (1, 0);

-- Each write adds its event to two indexes only (the cost of the feed is on writes):
-- readers find numbered events by revision, the sequencer finds the events still to
-- number. Both are partial, so neither holds the other's rows. Retention walks revisions
-- from the oldest and needs no index on time.
CREATE UNIQUE INDEX events_revision_key ON events (revision) WHERE revision IS NOT NULL;
CREATE INDEX events_unnumbered_idx ON events (id) WHERE revision IS NULL;

CREATE FUNCTION kuma_secrets_secret_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES ('delete', CASE WHEN OLD.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
                OLD.mesh, OLD.name, OLD.version, OLD.actor, OLD.request_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES (CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END,
                CASE WHEN NEW.mesh IS NULL THEN 'GlobalSecret' ELSE 'Secret' END,
                NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION kuma_secrets_mesh_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES ('delete', 'Mesh', NULL, OLD.name, OLD.version, OLD.actor, OLD.request_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES (CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END, 'Mesh', NULL,
                NEW.name, NEW.version, NEW.actor, NEW.request_id);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER secrets_events AFTER INSERT OR UPDATE OR DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_secret_event();
CREATE TRIGGER meshes_events AFTER INSERT OR UPDATE OR DELETE ON meshes
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_mesh_event();
