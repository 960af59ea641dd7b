-- lmq schema 2 for SQLite: operations (issue 4).  Tasks get a `batch` and the status
-- 'cancelled'; dead letters get a person's review and the time an approved one is
-- re-queued; paused queues and named batches get their tables.
--
-- SQLite has no ADD COLUMN IF NOT EXISTS: the backend runs an ALTER TABLE … ADD COLUMN
-- only when the column is missing, so this file can be re-run (repair) like the others.

ALTER TABLE {prefix}queue_tasks ADD COLUMN batch TEXT;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_batch
    ON {prefix}queue_tasks (batch, status) WHERE batch IS NOT NULL;
-- cancelled rows are pruned like done ones (the done index is partial on 'done')
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_cancelled
    ON {prefix}queue_tasks (updated) WHERE status = 'cancelled';

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN review TEXT;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN reviewed_by TEXT;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN reviewed_at REAL;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN review_note TEXT;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN requeue_at REAL;
-- what requeue_approved reads, and the groups of `lmq dead list --groups`
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_approved
    ON {prefix}queue_dead_letters (requeue_at) WHERE review = 'approved' AND status = 'dead';
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_fingerprint
    ON {prefix}queue_dead_letters (fingerprint);

CREATE TABLE IF NOT EXISTS {prefix}queue_queues (
    name      TEXT    PRIMARY KEY,
    paused    INTEGER NOT NULL DEFAULT 0,
    paused_at REAL
);

CREATE TABLE IF NOT EXISTS {prefix}queue_batches (
    name                TEXT    PRIMARY KEY,
    total               INTEGER NOT NULL,
    created             REAL    NOT NULL,
    completed           REAL,
    on_complete_task    TEXT,
    on_complete_payload TEXT,
    on_complete_queue   TEXT,
    followup_id         INTEGER
);
-- open batches (completed IS NULL) for settle_batches, old completed ones for prune
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_completed
    ON {prefix}queue_batches (completed);
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_created
    ON {prefix}queue_batches (created);
