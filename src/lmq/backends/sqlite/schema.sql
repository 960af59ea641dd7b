-- The current lmq schema for SQLite, applied in one go to an empty database (`lmq migrate`
-- or first use).  Databases made by an older lmq are upgraded by migrations/NNNN_*.sql
-- instead (tests/unit/test_schema.py checks that both roads give the same schema).
-- Idempotent (IF NOT EXISTS): migrate re-runs it to repair a dropped table.


-- Task ids are never reused, without the cost of AUTOINCREMENT (a fifth of a bulk
-- insert): a dead-lettered task keeps its row (status 'dead'), and the pruner never
-- deletes the newest row, so max(id) + 1 is always a fresh id.
CREATE TABLE IF NOT EXISTS {prefix}queue_tasks (
    id             INTEGER PRIMARY KEY,
    queue          TEXT    NOT NULL DEFAULT 'default',
    task_name      TEXT    NOT NULL,
    payload        TEXT    NOT NULL DEFAULT '{}',
    priority       INTEGER NOT NULL DEFAULT 0,
    status         TEXT    NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER,          -- NULL: the handler's setting (5 if it sets none)
    next_run       REAL    NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    created        TEXT             DEFAULT (strftime('%Y-%m-%d %H:%M:%S', 'now')),
    updated        REAL,
    locked_by      TEXT,
    locked_until   REAL,
    last_error     TEXT,
    unique_key     TEXT,
    errors         TEXT,
    dead_letter_id INTEGER,
    batch          TEXT,             -- the batch it belongs to (enqueue_many(batch=...))
    breaker        TEXT,             -- the circuit breaker it goes through
    rate_key       TEXT              -- the rate limit it waits for (rate claims only)
);

-- The claim reads only these partial indexes, so finished rows never slow it down.  A
-- plain claim never takes a rate-keyed task, so those have their own index; `breaker`
-- rides along so the claim's breaker test is read from the index, not the table.
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_ready
    ON {prefix}queue_tasks (priority DESC, next_run, id, breaker)
    WHERE status = 'pending' AND rate_key IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_queue_ready
    ON {prefix}queue_tasks (queue, priority DESC, next_run, id, breaker)
    WHERE status = 'pending' AND rate_key IS NULL;
-- rate claims (one key's tasks) and probe claims (one breaker's tasks)
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_rate_ready
    ON {prefix}queue_tasks (rate_key, priority DESC, next_run, id)
    WHERE status = 'pending' AND rate_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_breaker_ready
    ON {prefix}queue_tasks (breaker, priority DESC, next_run, id)
    WHERE status = 'pending' AND breaker IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_lease
    ON {prefix}queue_tasks (locked_until) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_done
    ON {prefix}queue_tasks (updated) WHERE status = 'done';
CREATE UNIQUE INDEX IF NOT EXISTS {prefix}queue_tasks_unique
    ON {prefix}queue_tasks (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'processing');
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_batch
    ON {prefix}queue_tasks (batch, status) WHERE batch IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_cancelled
    ON {prefix}queue_tasks (updated) WHERE status = 'cancelled';

CREATE TABLE IF NOT EXISTS {prefix}queue_dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      INTEGER NOT NULL,
    queue        TEXT    NOT NULL,
    task_name    TEXT    NOT NULL,
    payload      TEXT,
    priority     INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    error        TEXT,
    reason       TEXT,
    fingerprint  TEXT,
    created      TEXT,
    died_at      REAL    NOT NULL,
    errors       TEXT,
    unique_key   TEXT,
    status       TEXT    NOT NULL DEFAULT 'dead',
    requeued_at  REAL,
    discarded_at REAL,
    review       TEXT,             -- NULL | 'approved' | 'rejected'
    reviewed_by  TEXT,
    reviewed_at  REAL,
    review_note  TEXT,
    requeue_at   REAL,             -- approved: when a worker re-queues it
    breaker      TEXT,             -- the task's keys, restored by a re-queue
    rate_key     TEXT
);
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_status
    ON {prefix}queue_dead_letters (status, died_at);
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_task
    ON {prefix}queue_dead_letters (task_id);
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_approved
    ON {prefix}queue_dead_letters (requeue_at) WHERE review = 'approved' AND status = 'dead';
CREATE INDEX IF NOT EXISTS {prefix}queue_dead_letters_fingerprint
    ON {prefix}queue_dead_letters (fingerprint);

CREATE TABLE IF NOT EXISTS {prefix}queue_workers (
    id          TEXT PRIMARY KEY,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    version     TEXT    NOT NULL,
    queues      TEXT    NOT NULL,
    concurrency INTEGER NOT NULL,
    running     INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    started     REAL    NOT NULL,
    last_beat   REAL    NOT NULL
);

-- paused queues (a row per queue ever paused; paused = 0 once resumed)
CREATE TABLE IF NOT EXISTS {prefix}queue_queues (
    name      TEXT    PRIMARY KEY,
    paused    INTEGER NOT NULL DEFAULT 0,
    paused_at REAL
);

-- named batches: member counts come from the task rows (queue_tasks.batch)
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
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_completed
    ON {prefix}queue_batches (completed);
CREATE INDEX IF NOT EXISTS {prefix}queue_batches_created
    ON {prefix}queue_batches (created);

-- circuit breakers, rate limits and recurring schedules: rows swapped by compare-and-set
-- on `version` (the decisions are made in Python: lmq.breaker, lmq.ratelimit, lmq.schedule)

-- one row per breaker that has left its initial state (no row: closed)
CREATE TABLE IF NOT EXISTS {prefix}queue_breakers (
    name            TEXT    PRIMARY KEY,
    state           TEXT    NOT NULL DEFAULT 'closed',   -- closed | open | half_open
    failures        INTEGER NOT NULL DEFAULT 0,
    window_start    REAL    NOT NULL DEFAULT 0,
    window_calls    INTEGER NOT NULL DEFAULT 0,
    window_failures INTEGER NOT NULL DEFAULT 0,
    cooldown        REAL    NOT NULL DEFAULT 0,
    opened_at       REAL,
    retry_at        REAL,
    probe_by        TEXT,
    probe_until     REAL,
    trips           INTEGER NOT NULL DEFAULT 0,
    forced          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated         REAL    NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS {prefix}queue_rate_limits (
    name    TEXT    PRIMARY KEY,
    calls   INTEGER NOT NULL,
    per     REAL    NOT NULL,
    burst   INTEGER NOT NULL DEFAULT 1,
    tat     REAL    NOT NULL DEFAULT 0,    -- the next free slot (GCRA)
    updated REAL    NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS {prefix}queue_schedules (
    name         TEXT    PRIMARY KEY,
    task_name    TEXT    NOT NULL,
    queue        TEXT    NOT NULL DEFAULT 'default',
    payload      TEXT    NOT NULL DEFAULT '{}',
    priority     INTEGER NOT NULL DEFAULT 0,
    cron         TEXT,
    every        REAL,                        -- seconds
    timezone     TEXT    NOT NULL DEFAULT 'UTC',
    missed       TEXT    NOT NULL DEFAULT 'once',
    next_tick    REAL,
    last_tick    REAL,
    last_task_id INTEGER,
    paused       INTEGER NOT NULL DEFAULT 0,
    declared     REAL    NOT NULL DEFAULT 0,
    updated      REAL    NOT NULL DEFAULT 0,
    version      INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS {prefix}queue_meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
