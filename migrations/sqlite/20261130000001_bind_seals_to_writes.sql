-- Sealed values bound to the write that made them (seal format 2). `write_id` is a random
-- 16-byte id drawn by each write and part of the value's associated data, so an older
-- sealed value copied back into `data` does not open under the current `write_id`. NULL
-- means format 1 (sealed before this migration) or a plaintext row; `kuma-secrets
-- rotate-keys` rewrites both in format 2.

ALTER TABLE secrets ADD COLUMN write_id BLOB
    CONSTRAINT secrets_write_id_length CHECK (write_id IS NULL OR length(write_id) = 16);
