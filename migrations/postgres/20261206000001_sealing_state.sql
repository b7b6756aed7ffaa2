-- Whether this store has been fully sealed: the first time a command with a keyring (serve,
-- rotate-keys, seal-plaintext) finds no secret value and no Mesh CA key stored in clear,
-- it records the time here. From then on a plaintext row can only have been written behind
-- the service's back: it is refused whatever --accept-plaintext-rows says, and
-- seal-plaintext refuses to seal it.
--
-- The database is not trusted, so neither is this row: someone who can write to the
-- database can clear it. That brings the store back to the upgrade window, where sealing
-- plaintext is still only what an operator asks for by name (each row listed first), and
-- rows that grant authority (token signing keys, the admin token, CA keys) are never read
-- or sealed from plaintext at all.
CREATE TABLE sealing_state (
    id              integer     NOT NULL,
    fully_sealed_at timestamptz,
    CONSTRAINT sealing_state_pkey PRIMARY KEY (id),
    CONSTRAINT sealing_state_one_row CHECK (id = 1)
);
INSERT INTO sealing_state (id, fully_sealed_at) VALUES (1, NULL);
