-- Wakes change-feed watchers in other processes: every transaction that writes events
-- sends one NOTIFY on kuma_secrets_changes at its commit (Postgres folds identical
-- notifications of one transaction into one, and delivers none for a rollback). A store
-- LISTENs on it while anything watches the feed. The events table stays the truth: a
-- notification only says when to read it.
CREATE FUNCTION notify_change_watchers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kuma_secrets_changes', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change_watchers();
