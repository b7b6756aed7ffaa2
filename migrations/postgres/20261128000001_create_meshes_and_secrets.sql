-- Meshes and the Secrets / GlobalSecrets bound to them.
--
-- Unlike Kuma, which keeps every resource type in one `resources` table with the spec as
-- JSON text, secrets get a table of their own with the data as bytes: the store never has
-- to parse JSON to read a secret, and later migrations can seal `data` without touching
-- other resource types.
--
-- Names use COLLATE "C" so that ORDER BY (mesh, name) is byte order, the same as SQLite's
-- BINARY collation: both backends page through the same list in the same order, and keyset
-- comparisons like (mesh, name) > ($1, $2) can walk the unique index.

CREATE TABLE meshes (
    name              text COLLATE "C" NOT NULL,
    -- Starts at 1 and goes up by exactly 1 on every change (optimistic concurrency).
    version           bigint           NOT NULL,
    creation_time     timestamptz      NOT NULL,
    modification_time timestamptz      NOT NULL,
    labels            jsonb            NOT NULL DEFAULT '{}',
    -- Mesh spec fields (mtls, ...) as the user gave them.
    spec              jsonb            NOT NULL DEFAULT '{}',

    CONSTRAINT meshes_pkey PRIMARY KEY (name),
    CONSTRAINT meshes_name_length CHECK (char_length(name) BETWEEN 1 AND 63),
    CONSTRAINT meshes_version_positive CHECK (version >= 1),
    CONSTRAINT meshes_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT meshes_spec_object CHECK (jsonb_typeof(spec) = 'object')
);

CREATE TABLE secrets (
    -- Surrogate key: stable batch boundaries for bulk jobs (copy, re-encryption).
    id                bigint GENERATED ALWAYS AS IDENTITY,
    -- NULL for a GlobalSecret, the owning Mesh for a Secret.
    mesh              text COLLATE "C",
    name              text COLLATE "C" NOT NULL,
    version           bigint           NOT NULL,
    creation_time     timestamptz      NOT NULL,
    modification_time timestamptz      NOT NULL,
    labels            jsonb            NOT NULL DEFAULT '{}',
    data              bytea            NOT NULL,

    CONSTRAINT secrets_pkey PRIMARY KEY (id),
    -- Deleting a Mesh deletes its secrets in the same statement, hence the same
    -- transaction. (Kuma leaves REST-created secrets behind as orphans; we do not.)
    CONSTRAINT secrets_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name) ON DELETE CASCADE,
    -- One Secret of a name per Mesh. NULL meshes are distinct here, so GlobalSecrets need
    -- the partial index below.
    CONSTRAINT secrets_mesh_name_key UNIQUE (mesh, name),
    CONSTRAINT secrets_name_length CHECK (char_length(name) BETWEEN 1 AND 253),
    CONSTRAINT secrets_version_positive CHECK (version >= 1),
    CONSTRAINT secrets_data_not_empty CHECK (octet_length(data) > 0),
    CONSTRAINT secrets_labels_object CHECK (jsonb_typeof(labels) = 'object')
);

-- One GlobalSecret of a name: enforced by the database, not only by code. (A plain UNIQUE
-- treats NULL meshes as distinct; NULLS NOT DISTINCT would need Postgres 15.)
CREATE UNIQUE INDEX secrets_global_name_key ON secrets (name) WHERE mesh IS NULL;
