-- lmq schema 2 for PostgreSQL: cancelled tasks, batches, paused queues and the
-- dead-letter review (issue 4).  schema.sql holds the same catalog for an empty database.
-- Runs in the migrator's transaction (DDL is transactional here) and is safe to run again
-- (IF NOT EXISTS everywhere).  The new columns are nullable without a default, so adding
-- them rewrites nothing; the new index on the task table is empty (no row has a batch
-- yet) and the one on cancelled rows too, though building them reads the table once.
-- The status column is text: 'cancelled' needs no change.

ALTER TABLE {prefix}queue_tasks ADD COLUMN IF NOT EXISTS batch text;

CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_cancelled
    ON {prefix}queue_tasks (updated) WHERE status = 'cancelled';
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_batch
    ON {prefix}queue_tasks (batch, status) WHERE batch IS NOT NULL;

ALTER TABLE {prefix}queue_dead_letters
    ADD COLUMN IF NOT EXISTS discarded_at double precision,
    ADD COLUMN IF NOT EXISTS review       text,
    ADD COLUMN IF NOT EXISTS reviewed_by  text,
    ADD COLUMN IF NOT EXISTS reviewed_at  double precision,
    ADD COLUMN IF NOT EXISTS review_note  text,
    ADD COLUMN IF NOT EXISTS requeue_at   double precision;

CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_approved
    ON {prefix}queue_dead_letters (requeue_at) WHERE review = 'approved' AND status = 'dead';
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_fingerprint
    ON {prefix}queue_dead_letters (fingerprint);

CREATE TABLE IF NOT EXISTS {prefix}queue_queues (
    name      text PRIMARY KEY,
    paused    boolean NOT NULL DEFAULT false,
    paused_at double precision
);

CREATE TABLE IF NOT EXISTS {prefix}queue_batches (
    name                text PRIMARY KEY,
    total               integer NOT NULL,
    created             double precision NOT NULL,
    completed           double precision,
    on_complete_task    text,
    on_complete_payload text,
    on_complete_queue   text,
    followup_id         bigint
);
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_open
    ON {prefix}queue_batches (created) WHERE completed IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_completed
    ON {prefix}queue_batches (completed) WHERE completed IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_created
    ON {prefix}queue_batches (created);
