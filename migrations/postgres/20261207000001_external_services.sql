-- ExternalServices (Kuma's mesh-scoped description of a service outside the mesh, with the
-- TLS it is reached with), and one table of every reference from a resource to a Secret.
--
-- The spec is kept as the JSON object the user gave (Kuma's wire form), as a Mesh's is:
-- the store reads only `networking.tls`, to check and record the Secrets it names. An
-- inline client key is sealed inside it, bound to the write (see `sealing.rs`).

CREATE TABLE external_services (
    mesh              text COLLATE "C" NOT NULL,
    name              text COLLATE "C" NOT NULL,
    version           bigint           NOT NULL,
    creation_time     timestamptz      NOT NULL,
    modification_time timestamptz      NOT NULL,
    labels            jsonb            NOT NULL DEFAULT '{}',
    spec              jsonb            NOT NULL,
    actor             jsonb,
    request_id        text,

    CONSTRAINT external_services_pkey PRIMARY KEY (mesh, name),
    -- Deleting a Mesh deletes its ExternalServices in the same statement.
    CONSTRAINT external_services_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name)
        ON DELETE CASCADE,
    CONSTRAINT external_services_name_length CHECK (char_length(name) BETWEEN 1 AND 253),
    CONSTRAINT external_services_version_positive CHECK (version >= 1),
    CONSTRAINT external_services_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT external_services_spec_object CHECK (jsonb_typeof(spec) = 'object')
);

-- Who uses which Secret: one row per (referrer, field), for a Mesh's mTLS backends
-- (`mtls.backends["ca-1"].conf.cert`: a builtin backend's generated CA too) and an
-- ExternalService's TLS (`networking.tls.clientKey`). A referrer's write replaces its rows
-- in the same transaction, after locking every Secret it names (`FOR SHARE`); a Secret's
-- delete locks the Secret (`FOR UPDATE`) before it reads this table. So either the
-- referrer commits first and the delete sees its rows, or the delete commits first and
-- the referrer finds the Secret gone: never a reference to a deleted Secret. The delete
-- guard reads only this table; a new kind of referrer is new rows, not a new guard.
CREATE TABLE secret_references (
    mesh          text COLLATE "C" NOT NULL,
    referrer_type text             NOT NULL,
    referrer      text COLLATE "C" NOT NULL,
    -- Where in the referrer, as Kuma's validation paths spell it
    -- (`networking.tls.clientKey`).
    field         text             NOT NULL,
    secret        text COLLATE "C" NOT NULL,

    CONSTRAINT secret_references_pkey PRIMARY KEY (mesh, referrer_type, referrer, field),
    CONSTRAINT secret_references_mesh_fk FOREIGN KEY (mesh) REFERENCES meshes (name)
        ON DELETE CASCADE,
    CONSTRAINT secret_references_type_known
        CHECK (referrer_type IN ('Mesh', 'ExternalService'))
);
CREATE INDEX secret_references_secret_idx ON secret_references (mesh, secret);

-- The references of the Meshes already stored, as a Mesh write records them
-- (`Mtls::used_secrets`): both CA parts of a builtin backend (its generated Secrets), the
-- `secret` sources of a provided one.
INSERT INTO secret_references (mesh, referrer_type, referrer, field, secret)
SELECT m.name, 'Mesh', m.name,
       'mtls.backends[' || to_json(b->>'name')::text || '].conf.' || part.p,
       CASE WHEN b->>'type' = 'builtin'
            THEN m.name || '.ca-builtin-' || part.p || '-' || (b->>'name')
            ELSE b->'conf'->part.p->>'secret' END
FROM meshes m
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(m.spec->'mtls'->'backends') = 'array'
         THEN m.spec->'mtls'->'backends' ELSE '[]'::jsonb END) AS b
CROSS JOIN (VALUES ('cert'), ('key')) AS part (p)
WHERE jsonb_typeof(b) = 'object'
  AND jsonb_typeof(b->'name') = 'string'
  AND (b->>'type' = 'builtin'
       OR (b->>'type' = 'provided' AND jsonb_typeof(b->'conf'->part.p->'secret') = 'string'))
ON CONFLICT DO NOTHING;

ALTER TABLE events DROP CONSTRAINT events_type_known;
ALTER TABLE events ADD CONSTRAINT events_type_known
    CHECK (resource_type IN ('Secret', 'GlobalSecret', 'Mesh', 'ExternalService'));

CREATE FUNCTION kuma_secrets_external_service_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES ('delete', 'ExternalService', OLD.mesh, OLD.name, OLD.version, OLD.actor,
                OLD.request_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO events (operation, resource_type, mesh, name, version, actor, request_id)
        VALUES (CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END, 'ExternalService',
                NEW.mesh, NEW.name, NEW.version, NEW.actor, NEW.request_id);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER external_services_events AFTER INSERT OR UPDATE OR DELETE ON external_services
    FOR EACH ROW EXECUTE FUNCTION kuma_secrets_external_service_event();
