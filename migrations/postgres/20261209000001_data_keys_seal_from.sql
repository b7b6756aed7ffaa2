-- When each data key starts sealing new writes (`src/envelope`). A key made while servers
-- run is stored first and used later: every running server re-reads the data keys on a
-- short interval, so by `seals_from` each holds the new key and can open what it seals.
-- Until then the previous key goes on sealing. Keys stored before this column seal from
-- when they were made, as they did.
ALTER TABLE data_keys ADD COLUMN seals_from timestamptz;
UPDATE data_keys SET seals_from = created;
ALTER TABLE data_keys ALTER COLUMN seals_from SET NOT NULL;
