-- Meshes and the Secrets / GlobalSecrets bound to them: the same guarantees as
-- migrations/postgres, in SQLite's dialect. STRICT tables make SQLite check column types.
--
-- Timestamps are RFC 3339 text (sqlx's encoding of chrono::DateTime<Utc>); labels and spec
-- are JSON text, checked to be objects.

CREATE TABLE meshes (
    name              TEXT    NOT NULL,
    -- Starts at 1 and goes up by exactly 1 on every change (optimistic concurrency).
    version           INTEGER NOT NULL,
    creation_time     TEXT    NOT NULL,
    modification_time TEXT    NOT NULL,
    labels            TEXT    NOT NULL DEFAULT '{}',
    spec              TEXT    NOT NULL DEFAULT '{}',

    CONSTRAINT meshes_pkey PRIMARY KEY (name),
    CONSTRAINT meshes_name_length CHECK (length(name) BETWEEN 1 AND 63),
    CONSTRAINT meshes_version_positive CHECK (version >= 1),
    CONSTRAINT meshes_labels_object CHECK (json_type(labels) = 'object'),
    CONSTRAINT meshes_spec_object CHECK (json_type(spec) = 'object')
) STRICT;

CREATE TABLE secrets (
    -- Alias of the rowid: stable batch boundaries for bulk jobs.
    id                INTEGER NOT NULL,
    -- NULL for a GlobalSecret, the owning Mesh for a Secret.
    mesh              TEXT,
    name              TEXT    NOT NULL,
    version           INTEGER NOT NULL,
    creation_time     TEXT    NOT NULL,
    modification_time TEXT    NOT NULL,
    labels            TEXT    NOT NULL DEFAULT '{}',
    data              BLOB    NOT NULL,

    CONSTRAINT secrets_pkey PRIMARY KEY (id),
    -- Needs PRAGMA foreign_keys = ON, which the store sets on every connection.
    CONSTRAINT secrets_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name) ON DELETE CASCADE,
    CONSTRAINT secrets_mesh_name_key UNIQUE (mesh, name),
    CONSTRAINT secrets_name_length CHECK (length(name) BETWEEN 1 AND 253),
    CONSTRAINT secrets_version_positive CHECK (version >= 1),
    CONSTRAINT secrets_data_not_empty CHECK (length(data) > 0),
    CONSTRAINT secrets_labels_object CHECK (json_type(labels) = 'object')
) STRICT;

-- One GlobalSecret of a name (UNIQUE treats NULL meshes as distinct).
CREATE UNIQUE INDEX secrets_global_name_key ON secrets (name) WHERE mesh IS NULL;
