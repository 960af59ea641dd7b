-- lmq schema 3 for MySQL / MariaDB: circuit breakers, rate limits and recurring schedules
-- (issue 5).  schema.sql holds the same catalog for an empty database.
--
-- Each statement is idempotent, as in 0002 (an ADD COLUMN that ran before fails with 1060
-- and is skipped).  The task's `breaker` and `rate_key` go at the end of the table
-- (instant); the two ready indexes are then rebuilt with `rate_key` leading, in one
-- statement (in place: the table is not copied, reads and writes go on; run again, it
-- builds the same indexes again).

ALTER TABLE {prefix}queue_tasks ADD COLUMN breaker VARCHAR(191) NULL;

ALTER TABLE {prefix}queue_tasks ADD COLUMN rate_key VARCHAR(191) NULL;

ALTER TABLE {prefix}queue_tasks
    DROP KEY {prefix}queue_tasks_ready,
    ADD KEY {prefix}queue_tasks_ready (rate_key, ready_priority, ready_at, id),
    DROP KEY {prefix}queue_tasks_queue_ready,
    ADD KEY {prefix}queue_tasks_queue_ready (queue, rate_key, ready_priority, ready_at, id);

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN breaker VARCHAR(191) NULL;

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN rate_key VARCHAR(191) NULL;

-- circuit breakers by name (lmq.breaker decides; the backend swaps rows by compare-and-set
-- on version: 0 = no row, each stored change adds one)
CREATE TABLE IF NOT EXISTS {prefix}queue_breakers (
    name            VARCHAR(191) NOT NULL,
    state           VARCHAR(16)  NOT NULL DEFAULT 'closed',
    failures        INT          NOT NULL DEFAULT 0,
    window_start    DOUBLE       NOT NULL DEFAULT 0,
    window_calls    INT          NOT NULL DEFAULT 0,
    window_failures INT          NOT NULL DEFAULT 0,
    cooldown        DOUBLE       NOT NULL DEFAULT 0,
    opened_at       DOUBLE       NULL,
    retry_at        DOUBLE       NULL,
    probe_by        VARCHAR(191) NULL,
    probe_until     DOUBLE       NULL,
    trips           INT          NOT NULL DEFAULT 0,
    forced          TINYINT(1)   NOT NULL DEFAULT 0,
    last_error      TEXT         NULL,
    updated         DOUBLE       NOT NULL DEFAULT 0,
    version         INT          NOT NULL DEFAULT 1,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- rate limits by name: calls per `per` seconds, tat the next free slot (GCRA)
CREATE TABLE IF NOT EXISTS {prefix}queue_rate_limits (
    name    VARCHAR(191) NOT NULL,
    calls   INT          NOT NULL,
    per     DOUBLE       NOT NULL,
    burst   INT          NOT NULL DEFAULT 1,
    tat     DOUBLE       NOT NULL DEFAULT 0,
    updated DOUBLE       NOT NULL DEFAULT 0,
    version INT          NOT NULL DEFAULT 1,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- recurring tasks (queue.schedule), synced from code by every worker; next_tick is fired
-- by compare-and-set on version, in the transaction that enqueues the tick's task
CREATE TABLE IF NOT EXISTS {prefix}queue_schedules (
    name         VARCHAR(191) NOT NULL,
    task_name    VARCHAR(255) NOT NULL,
    queue        VARCHAR(191) NOT NULL DEFAULT 'default',
    payload      LONGTEXT     NOT NULL,
    priority     INT          NOT NULL DEFAULT 0,
    cron         VARCHAR(255) NULL,
    every        DOUBLE       NULL,
    timezone     VARCHAR(64)  NOT NULL DEFAULT 'UTC',
    missed       VARCHAR(16)  NOT NULL DEFAULT 'once',
    next_tick    DOUBLE       NULL,
    last_tick    DOUBLE       NULL,
    last_task_id BIGINT       NULL,
    paused       TINYINT(1)   NOT NULL DEFAULT 0,
    declared     DOUBLE       NOT NULL DEFAULT 0,
    updated      DOUBLE       NOT NULL DEFAULT 0,
    version      INT          NOT NULL DEFAULT 1,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
