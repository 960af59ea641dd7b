-- lmq schema 2 for MySQL / MariaDB: cancelled tasks, batches, paused queues and the
-- dead-letter review (issue 4).  schema.sql holds the same catalog for an empty database.
--
-- DDL commits statement by statement, so each statement changes one thing and is safe to
-- run again: the backend skips an ADD COLUMN or ADD KEY whose column or index already
-- exists (errors 1060 and 1061), CREATE TABLE has IF NOT EXISTS, and re-declaring the
-- status ENUM is a no-op.  New columns go at the ends of the tables (an instant ADD COLUMN
-- on MySQL 8.0.12+ and MariaDB 10.3+); appending a value to an ENUM is instant too; the
-- new indexes are built online (in place, reads and writes go on).

ALTER TABLE {prefix}queue_tasks
    MODIFY COLUMN status ENUM('pending', 'processing', 'done', 'dead', 'discarded', 'cancelled')
                         NOT NULL DEFAULT 'pending';

ALTER TABLE {prefix}queue_tasks ADD COLUMN batch VARCHAR(191) NULL;

ALTER TABLE {prefix}queue_tasks ADD KEY {prefix}queue_tasks_batch (batch, status);

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN review VARCHAR(16) NULL;

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN reviewed_by VARCHAR(255) NULL;

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN reviewed_at DOUBLE NULL;

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN review_note TEXT NULL;

ALTER TABLE {prefix}queue_dead_letters ADD COLUMN requeue_at DOUBLE NULL;

ALTER TABLE {prefix}queue_dead_letters
    ADD KEY {prefix}queue_dead_letters_approved (review, status, requeue_at);

ALTER TABLE {prefix}queue_dead_letters
    ADD KEY {prefix}queue_dead_letters_fingerprint (fingerprint);

CREATE TABLE IF NOT EXISTS {prefix}queue_queues (
    name      VARCHAR(191) NOT NULL,
    paused    TINYINT(1)   NOT NULL DEFAULT 0,
    paused_at DOUBLE       NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

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
