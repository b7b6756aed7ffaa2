-- Every write appends an event, so every index on `events` is paid for on the write path:
-- at 32 concurrent writers the event's primary-key entry (on `id`, always the rightmost
-- leaf) cost about a tenth of update throughput. Nothing looks events up by `id` but the
-- sequencer, which only wants the unnumbered ones, and `events_unnumbered_idx` already
-- holds exactly those. So an event is now one heap tuple and one index entry when written;
-- numbering moves it from the unnumbered index to `events_revision_key`.
ALTER TABLE events DROP CONSTRAINT events_pkey;
