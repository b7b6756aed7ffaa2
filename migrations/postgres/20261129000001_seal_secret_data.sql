-- Encryption at rest: `data` may now hold a sealed value (AES-256-GCM: a 12-byte nonce,
-- then the ciphertext and its 16-byte tag) instead of the plaintext. `key_id` names the
-- keyring key that sealed it; NULL means the row is still plaintext, as every row written
-- before this migration is. Such rows stay readable, and `kuma-secrets rotate-keys` seals
-- them online, in batches.
--
-- Adding a nullable column without a default is a catalog change only: no table rewrite,
-- no long lock, so this migration runs under live traffic.

ALTER TABLE secrets ADD COLUMN key_id text COLLATE "C";

ALTER TABLE secrets ADD CONSTRAINT secrets_key_id_not_empty
    CHECK (key_id IS NULL OR char_length(key_id) BETWEEN 1 AND 64);

-- Start-up checks that every key id in use is in the keyring, and rotate-keys finds the
-- rows still on an old key: both read this index, not the table.
CREATE INDEX secrets_key_id_idx ON secrets (key_id);
