-- Sealed values bound to the write that made them (seal format 2). `write_id` is a random
-- 16-byte id drawn by each write; it is part of the value's associated data, so an older
-- sealed value of the same row copied back into `data` no longer opens under the current
-- `write_id`. NULL means format 1 (sealed before this migration, bound to the secret's
-- identity only) or a plaintext row; `kuma-secrets rotate-keys` rewrites both in format 2.
--
-- A nullable column without a default: a catalog change only, safe under live traffic.

ALTER TABLE secrets ADD COLUMN write_id bytea;

ALTER TABLE secrets ADD CONSTRAINT secrets_write_id_length
    CHECK (write_id IS NULL OR octet_length(write_id) = 16);
