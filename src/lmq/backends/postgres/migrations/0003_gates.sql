-- lmq schema 3 for PostgreSQL: circuit breakers, rate limits and recurring schedules
-- (issue 5).  schema.sql holds the same catalog for an empty database.  Runs in the
-- migrator's transaction and is safe to run again.  The new task and dead-letter columns
-- are nullable without a default (adding them rewrites nothing).  The two ready indexes
-- are rebuilt with a narrower predicate (plain rows only: no rate key, no breaker), which
-- reads the table once and holds its lock until the migration commits; the new indexes
-- on keyed rows start empty.

ALTER TABLE {prefix}queue_tasks
    ADD COLUMN IF NOT EXISTS breaker  text,
    ADD COLUMN IF NOT EXISTS rate_key text;
ALTER TABLE {prefix}queue_dead_letters
    ADD COLUMN IF NOT EXISTS breaker  text,
    ADD COLUMN IF NOT EXISTS rate_key text;

DROP INDEX IF EXISTS {prefix}queue_tasks_ready;
DROP INDEX IF EXISTS {prefix}queue_tasks_queue_ready;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_ready
    ON {prefix}queue_tasks (priority DESC, next_run, id)
    WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_queue_ready
    ON {prefix}queue_tasks (queue, priority DESC, next_run, id)
    WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_breaker_ready
    ON {prefix}queue_tasks (breaker, priority DESC, next_run, id)
    WHERE status = 'pending' AND breaker IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}queue_tasks_rate_ready
    ON {prefix}queue_tasks (rate_key, priority DESC, next_run, id)
    WHERE status = 'pending' AND rate_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS {prefix}queue_breakers (
    name            text PRIMARY KEY,
    state           text    NOT NULL DEFAULT 'closed',
    failures        integer NOT NULL DEFAULT 0,
    window_start    double precision NOT NULL DEFAULT 0,
    window_calls    integer NOT NULL DEFAULT 0,
    window_failures integer NOT NULL DEFAULT 0,
    cooldown        double precision NOT NULL DEFAULT 0,
    opened_at       double precision,
    retry_at        double precision,
    probe_by        text,
    probe_until     double precision,
    trips           integer NOT NULL DEFAULT 0,
    forced          boolean NOT NULL DEFAULT false,
    last_error      text,
    updated         double precision NOT NULL DEFAULT 0,
    version         integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS {prefix}queue_breakers_blocked
    ON {prefix}queue_breakers (name) WHERE state <> 'closed';

CREATE TABLE IF NOT EXISTS {prefix}queue_rate_limits (
    name    text PRIMARY KEY,
    calls   integer NOT NULL,
    per     double precision NOT NULL,
    burst   integer NOT NULL DEFAULT 1,
    tat     double precision NOT NULL DEFAULT 0,
    updated double precision NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS {prefix}queue_schedules (
    name         text PRIMARY KEY,
    task_name    text    NOT NULL,
    queue        text    NOT NULL DEFAULT 'default',
    payload      text    NOT NULL DEFAULT '{}',
    priority     integer NOT NULL DEFAULT 0,
    cron         text,
    every        double precision,
    timezone     text    NOT NULL DEFAULT 'UTC',
    missed       text    NOT NULL DEFAULT 'once',
    next_tick    double precision,
    last_tick    double precision,
    last_task_id bigint,
    paused       boolean NOT NULL DEFAULT false,
    declared     double precision NOT NULL DEFAULT 0,
    updated      double precision NOT NULL DEFAULT 0,
    version      integer NOT NULL DEFAULT 1
);
