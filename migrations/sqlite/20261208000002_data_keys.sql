-- Data keys (DEKs) of envelope encryption (`src/envelope`): with a key source that keeps
-- its root key out of reach (`--encryption-keys pkcs11:…`), secrets are sealed with these
-- 256-bit keys, and each is stored here only wrapped (AES-GCM, its id as associated data)
-- by a key-encryption key (KEK) that never leaves the HSM or KMS. A row's `key_id` names
-- its DEK, as it names a keyring file's key.
--
-- The database is not trusted with them: a copy of the file holds no usable key. Someone
-- who can write here can delete a DEK (its secrets then fail to open, loudly) or plant one
-- wrapped by a KEK they do not have (it does not unwrap, and the store refuses to start);
-- they cannot read one.
CREATE TABLE data_keys (
    id      TEXT NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    -- The KEK that wraps it, by the source's name for it (never key material, never a PIN).
    kek     TEXT NOT NULL CHECK (length(kek) >= 1),
    wrapped BLOB NOT NULL,
    -- RFC 3339, as every time in this schema.
    created TEXT NOT NULL
) STRICT;
