-- Encryption at rest: `data` may now hold a sealed value (AES-256-GCM: a 12-byte nonce,
-- then the ciphertext and its 16-byte tag). `key_id` names the keyring key that sealed
-- it; NULL means the row is still plaintext, as every row written before this migration
-- is. `kuma-secrets rotate-keys` seals those.
--
-- SQLite cannot add a CHECK constraint to an existing table without rebuilding it; the
-- column check lives in the ADD COLUMN itself.

ALTER TABLE secrets ADD COLUMN key_id TEXT
    CONSTRAINT secrets_key_id_not_empty CHECK (key_id IS NULL OR length(key_id) BETWEEN 1 AND 64);

CREATE INDEX secrets_key_id_idx ON secrets (key_id);
