-- lmq schema for MySQL 8.0.13+ / MariaDB 10.6+ (InnoDB, utf8mb4): the current schema,
-- applied in one go to an empty database (migrations/ upgrade an older one; a test checks
-- that both give the same catalog).
--
-- Times are epoch seconds (DOUBLE, UTC) taken from the database server's clock, except
-- `created`, which may hold site-local time written by another program ($wpdb->insert
-- with current_time('mysql')) and is never used for scheduling.  A bare
--   INSERT INTO {prefix}queue_tasks (task_name, payload, status, created) VALUES (...)
-- makes a task that is runnable at once: next_run defaults to the server's now.
--
-- The now expression, UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6, does not depend on
-- the session's time_zone (UNIX_TIMESTAMP(NOW()) would, in the hour a DST change repeats),
-- and is DOUBLE arithmetic (no DECIMAL conversions per row).  `status` is an ENUM: a
-- one-byte key part in every index (the text 'pending' inserts as before).
--
-- InnoDB has no partial indexes, so the claim's indexes read stored generated columns
-- that are NULL unless the task is pending: ready_priority (-priority) and ready_at
-- (next_run).  The claim reads `ready_priority IS NOT NULL` (finished rows sit in the
-- NULL part of the index and cost it nothing) in ORDER BY ready_priority, ready_at, id:
-- ascending, so one index is read in order on every supported server (descending index
-- parts need MySQL 8 or MariaDB 10.8+).  Acknowledging a task (processing -> done) leaves
-- both NULL, so it does not touch the claim's indexes at all.  `live_key` is unique_key
-- while the task is pending or processing and NULL otherwise; its UNIQUE index is the
-- partial unique index MySQL lacks (NULLs never collide).
--
-- next_run is when the row next matters to the scheduler: for a pending task when it is
-- due, for a processing one when its lease expires (= locked_until), for a done one when
-- it finished (or was cancelled).  So one index, due (status, next_run), answers
-- "anything due?", "the earliest due", "which leases expired?" and "which done rows are
-- old?".
--
-- Schema 2 (migrations/0002_operations.sql) added, at the ends of the tables so that
-- MySQL 8.0.12+ and MariaDB 10.3+ add them instantly: the status `cancelled`, a task's
-- `batch` (NULL unless enqueued with batch=NAME), the dead letters' review fields,
-- {prefix}queue_queues (paused queues) and {prefix}queue_batches.
--
-- Schema 3 (migrations/0003_gates.sql) added a task's circuit `breaker` and `rate_key`
-- (NULL for a task without them; kept by its dead letter), {prefix}queue_breakers,
-- {prefix}queue_rate_limits and {prefix}queue_schedules.  `rate_key` leads the two ready
-- indexes: plain claims read their NULL part (`rate_key IS NULL AND ready_priority IS NOT
-- NULL`), so they never see a rate-limited backlog, and a rate claim reads its key's part in
-- the same order.  No generated column was added (each costs every claim and acknowledgement
-- its evaluation) and the indexes were rebuilt in place, not the table.  Tasks behind a
-- breaker whose stored state is not closed are passed over by a subquery on the breaker's
-- primary key, run only for rows whose breaker is not NULL (and left out of a plain claim
-- until it meets such a row).
CREATE TABLE IF NOT EXISTS {prefix}queue_tasks (
    id             BIGINT       NOT NULL AUTO_INCREMENT,
    queue          VARCHAR(191) NOT NULL DEFAULT 'default',
    task_name      VARCHAR(255) NOT NULL,
    payload        LONGTEXT     NOT NULL DEFAULT ('{}'),
    priority       INT          NOT NULL DEFAULT 0,
    status         ENUM('pending', 'processing', 'done', 'dead', 'discarded', 'cancelled')
                                NOT NULL DEFAULT 'pending',
    attempts       INT          NOT NULL DEFAULT 0,
    max_attempts   INT          NULL,
    next_run       DOUBLE       NOT NULL DEFAULT (UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6),
    created        DATETIME     NULL DEFAULT (UTC_TIMESTAMP()),
    updated        DOUBLE       NULL,
    locked_by      VARCHAR(191) NULL,
    locked_until   DOUBLE       NULL,
    last_error     TEXT         NULL,
    unique_key     VARCHAR(191) NULL,
    errors         LONGTEXT     NULL,
    dead_letter_id BIGINT       NULL,
    ready_priority INT          AS (CASE WHEN status = 'pending' THEN -priority END) STORED,
    ready_at       DOUBLE       AS (CASE WHEN status = 'pending' THEN next_run END) STORED,
    live_key       VARCHAR(191)
        AS (CASE WHEN status IN ('pending', 'processing') THEN unique_key END) STORED,
    batch          VARCHAR(191) NULL,
    breaker        VARCHAR(191) NULL,
    rate_key       VARCHAR(191) NULL,
    PRIMARY KEY (id),
    KEY {prefix}queue_tasks_ready (rate_key, ready_priority, ready_at, id),
    KEY {prefix}queue_tasks_queue_ready (queue, rate_key, ready_priority, ready_at, id),
    KEY {prefix}queue_tasks_due (status, next_run),
    UNIQUE KEY {prefix}queue_tasks_unique (live_key),
    KEY {prefix}queue_tasks_batch (batch, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {prefix}queue_dead_letters (
    id           BIGINT       NOT NULL AUTO_INCREMENT,
    task_id      BIGINT       NOT NULL,
    queue        VARCHAR(191) NOT NULL,
    task_name    VARCHAR(255) NOT NULL,
    payload      LONGTEXT     NULL,
    priority     INT          NOT NULL DEFAULT 0,
    attempts     INT          NOT NULL DEFAULT 0,
    max_attempts INT          NULL,
    error        TEXT         NULL,
    reason       TEXT         NULL,
    fingerprint  VARCHAR(191) NULL,
    created      DATETIME     NULL,
    died_at      DOUBLE       NOT NULL,
    errors       LONGTEXT     NULL,
    unique_key   VARCHAR(191) NULL,
    status       VARCHAR(16)  NOT NULL DEFAULT 'dead',
    requeued_at  DOUBLE       NULL,
    discarded_at DOUBLE       NULL,
    review       VARCHAR(16)  NULL,
    reviewed_by  VARCHAR(255) NULL,
    reviewed_at  DOUBLE       NULL,
    review_note  TEXT         NULL,
    requeue_at   DOUBLE       NULL,
    breaker      VARCHAR(191) NULL,
    rate_key     VARCHAR(191) NULL,
    PRIMARY KEY (id),
    KEY {prefix}queue_dead_letters_status (status, died_at),
    KEY {prefix}queue_dead_letters_task (task_id),
    KEY {prefix}queue_dead_letters_approved (review, status, requeue_at),
    KEY {prefix}queue_dead_letters_fingerprint (fingerprint)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {prefix}queue_workers (
    id          VARCHAR(191) NOT NULL,
    host        VARCHAR(255) NOT NULL,
    pid         INT          NOT NULL,
    version     VARCHAR(64)  NOT NULL,
    queues      TEXT         NOT NULL,
    concurrency INT          NOT NULL,
    running     INT          NOT NULL DEFAULT 0,
    done        BIGINT       NOT NULL DEFAULT 0,
    started     DOUBLE       NOT NULL,
    last_beat   DOUBLE       NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {prefix}queue_meta (
    `key`   VARCHAR(191) NOT NULL,
    `value` TEXT         NULL,
    PRIMARY KEY (`key`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- a queue's settings by name; a row exists once the queue was paused (or resumed)
CREATE TABLE IF NOT EXISTS {prefix}queue_queues (
    name      VARCHAR(191) NOT NULL,
    paused    TINYINT(1)   NOT NULL DEFAULT 0,
    paused_at DOUBLE       NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- named batches (enqueue_many(..., batch=NAME)); members are the tasks with batch = name.
-- completed is set once, by the first settle_batches that finds no member pending or
-- processing (a compare-and-set on completed IS NULL), with the follow-up task's id.
CREATE TABLE IF NOT EXISTS {prefix}queue_batches (
    name                VARCHAR(191) NOT NULL,
    total               INT          NOT NULL,
    created             DOUBLE       NOT NULL,
    completed           DOUBLE       NULL,
    on_complete_task    VARCHAR(255) NULL,
    on_complete_payload LONGTEXT     NULL,
    on_complete_queue   VARCHAR(191) NULL,
    followup_id         BIGINT       NULL,
    PRIMARY KEY (name),
    KEY {prefix}queue_batches_completed (completed),
    KEY {prefix}queue_batches_created (created)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

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
