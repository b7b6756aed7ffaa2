-- ExternalServices and the references from resources to Secrets: the same tables as
-- migrations/postgres, in SQLite's dialect. (SQLite runs one write transaction at a time,
-- so the reference guard needs no row locks here.)

CREATE TABLE external_services (
    mesh              TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    version           INTEGER NOT NULL,
    creation_time     TEXT    NOT NULL,
    modification_time TEXT    NOT NULL,
    labels            TEXT    NOT NULL DEFAULT '{}',
    spec              TEXT    NOT NULL,
    actor             TEXT,
    request_id        TEXT,

    CONSTRAINT external_services_pkey PRIMARY KEY (mesh, name),
    CONSTRAINT external_services_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name)
        ON DELETE CASCADE,
    CONSTRAINT external_services_name_length CHECK (length(name) BETWEEN 1 AND 253),
    CONSTRAINT external_services_version_positive CHECK (version >= 1),
    CONSTRAINT external_services_labels_object CHECK (json_type(labels) = 'object'),
    CONSTRAINT external_services_spec_object CHECK (json_type(spec) = 'object')
) STRICT;

CREATE TABLE secret_references (
    mesh          TEXT NOT NULL,
    referrer_type TEXT NOT NULL,
    referrer      TEXT NOT NULL,
    field         TEXT NOT NULL,
    secret        TEXT NOT NULL,

    CONSTRAINT secret_references_pkey PRIMARY KEY (mesh, referrer_type, referrer, field),
    CONSTRAINT secret_references_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name)
        ON DELETE CASCADE,
    CONSTRAINT secret_references_type_known
        CHECK (referrer_type IN ('Mesh', 'ExternalService'))
) STRICT;
CREATE INDEX secret_references_secret_idx ON secret_references (mesh, secret);

-- The references of the Meshes already stored, as a Mesh write records them.
INSERT OR IGNORE INTO secret_references (mesh, referrer_type, referrer, field, secret)
SELECT m.name, 'Mesh', m.name,
       'mtls.backends[' || json_quote(json_extract(b.value, '$.name')) || '].conf.' || part.p,
       CASE WHEN json_extract(b.value, '$.type') = 'builtin'
            THEN m.name || '.ca-builtin-' || part.p || '-' || json_extract(b.value, '$.name')
            ELSE json_extract(b.value, '$.conf.' || part.p || '.secret') END
FROM meshes m,
     json_each(CASE WHEN json_type(m.spec, '$.mtls.backends') = 'array'
                    THEN json_extract(m.spec, '$.mtls.backends') ELSE '[]' END) AS b,
     (SELECT 'cert' AS p UNION ALL SELECT 'key') AS part
WHERE json_type(b.value) = 'object'
  AND json_type(b.value, '$.name') = 'text'
  AND (json_extract(b.value, '$.type') = 'builtin'
       OR (json_extract(b.value, '$.type') = 'provided'
           AND json_type(b.value, '$.conf.' || part.p || '.secret') = 'text'));

-- SQLite cannot change a CHECK constraint: the events table is rebuilt with the new type
-- allowed, its rows and index kept (SQLite's documented procedure). The triggers that
-- write to it name it, and write to the new table once it is renamed: `legacy_alter_table`
-- keeps the rename from checking them while no table of that name exists.
CREATE TABLE events_rebuilt (
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
    CONSTRAINT events_type_known
        CHECK (resource_type IN ('Secret', 'GlobalSecret', 'Mesh', 'ExternalService'))
);
INSERT INTO events_rebuilt SELECT revision, time, operation, resource_type, mesh, name, version,
    actor, request_id FROM events;
PRAGMA legacy_alter_table = ON;
DROP TABLE events;
ALTER TABLE events_rebuilt RENAME TO events;
PRAGMA legacy_alter_table = OFF;
CREATE INDEX events_time_idx ON events (time);

CREATE TRIGGER external_services_insert_event AFTER INSERT ON external_services BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'create', 'ExternalService',
            NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER external_services_update_event AFTER UPDATE ON external_services
WHEN NEW.version <> OLD.version BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'update', 'ExternalService',
            NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
END;

CREATE TRIGGER external_services_delete_event AFTER DELETE ON external_services BEGIN
    UPDATE events_sequence SET last = last + 1 WHERE id = 1;
    INSERT INTO events (revision, operation, resource_type, mesh, name, version, actor, request_id)
    VALUES ((SELECT last FROM events_sequence WHERE id = 1), 'delete', 'ExternalService',
            OLD.mesh, OLD.name, OLD.version, OLD.actor, OLD.request_id);
END;
