-- lmq schema 3 for SQLite: circuit breakers, rate limits and recurring schedules (issue 5).
-- Tasks and dead letters carry the breaker they go through and the rate limit key they
-- wait for; the breaker, rate-limit and schedule rows get their tables (swapped by
-- compare-and-set on `version`; the decisions are made in Python, lmq.breaker etc.).
--
-- Re-runnable like the others: ADD COLUMN is skipped by the backend when the column
-- exists, and the two ready indexes are dropped and made again with their new definition.

ALTER TABLE {prefix}queue_tasks ADD COLUMN breaker TEXT;
ALTER TABLE {prefix}queue_tasks ADD COLUMN rate_key TEXT;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN breaker TEXT;
ALTER TABLE {prefix}queue_dead_letters ADD COLUMN rate_key TEXT;

-- A plain claim never takes a rate-keyed task, so those leave the ready indexes (and get
-- their own); `breaker` rides along at the end so the claim's breaker test (NULL for
-- most tasks) is read from the index, not the table.
DROP INDEX IF EXISTS {prefix}queue_tasks_ready;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_ready
    ON {prefix}queue_tasks (priority DESC, next_run, id, breaker)
    WHERE status = 'pending' AND rate_key IS NULL;
DROP INDEX IF EXISTS {prefix}queue_tasks_queue_ready;
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
