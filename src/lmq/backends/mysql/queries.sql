-- Every statement the MySQL/MariaDB backend runs, by name.  {prefix} is the table prefix;
-- {now} is the server's clock as epoch seconds (see schema.sql); {queue_filter} is "" or
-- "AND queue IN (...)" built from the worker's fixed --queues list; {ids} is a list of
-- integer ids formatted by the backend.  Parameters are PyMySQL's %(name)s, so a literal
-- percent sign is written %%.

-- name: schema_version
SELECT `value` FROM {prefix}queue_meta WHERE `key` = 'schema_version'

-- name: set_schema_version
INSERT INTO {prefix}queue_meta (`key`, `value`) VALUES ('schema_version', %(version)s)
ON DUPLICATE KEY UPDATE `value` = %(version)s

-- name: tables
SELECT table_name FROM information_schema.tables
 WHERE table_schema = DATABASE() AND table_name IN %(names)s

-- name: server_info
SELECT VERSION(), @@auto_increment_increment, @@max_allowed_packet

-- name: now
SELECT {now}

-- name: insert_head
-- the VALUES rows follow: (task_name, payload, queue, priority, max_attempts,
-- next_run = COALESCE(run_at, now) + delay, unique_key), built by the backend
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, updated, created)
VALUES

-- name: insert_row
(%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, {now}, UTC_TIMESTAMP())

-- name: insert_unique
-- a live task with this key already: its id, through LAST_INSERT_ID(expr)
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, updated, created)
VALUES (%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, {now}, UTC_TIMESTAMP())
ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)

-- name: count_range
SELECT COUNT(*) FROM {prefix}queue_tasks WHERE id BETWEEN %(first)s AND %(last)s

-- name: find_unique
SELECT id FROM {prefix}queue_tasks WHERE live_key = %(key)s

-- name: rescue
-- expired leases back to pending, the lapse recorded as an error (attempt = the one lost)
UPDATE {prefix}queue_tasks
   SET status = 'pending',
       last_error = CONCAT('lease expired: worker ', COALESCE(locked_by, '?'),
                           ' stopped renewing it (died or hung)'),
       errors = JSON_ARRAY_APPEND(COALESCE(errors, '[]'), '$', JSON_OBJECT(
           'attempt', attempts,
           'at', DATE_FORMAT(UTC_TIMESTAMP(6), '%%Y-%%m-%%dT%%H:%%i:%%s.%%f+00:00'),
           'type', 'LeaseExpired',
           'message', CONCAT('lease expired: worker ', COALESCE(locked_by, '?'),
                             ' stopped renewing it (died or hung)'),
           'traceback', NULL)),
       locked_by = NULL, locked_until = NULL, next_run = {now}, updated = {now}
 WHERE status = 'processing' AND next_run <= {now}

-- name: claim_select
-- SKIP LOCKED: rows another claim holds are passed over, never waited for
SELECT id, queue, task_name, payload, attempts + 1, max_attempts
  FROM {prefix}queue_tasks FORCE INDEX ({index})
 WHERE ready_priority IS NOT NULL AND ready_at <= {now} {queue_filter}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: claim_select_sorted
-- one queue of several (UNION ALL of these, merged by the backend): the sort key too
SELECT id, queue, task_name, payload, attempts + 1, max_attempts, ready_priority, ready_at
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
 WHERE queue = %(q{i})s AND ready_priority IS NOT NULL AND ready_at <= {now}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: claim_mark
UPDATE {prefix}queue_tasks
   SET status = 'processing', attempts = attempts + 1, locked_by = %(worker)s,
       locked_until = {now} + %(lease)s, next_run = {now} + %(lease)s, updated = {now}
 WHERE id IN ({ids})

-- name: claim_pick
-- the fallback for servers without SKIP LOCKED, step 1: the best ready ids, a plain read
-- (an UPDATE ... ORDER BY ... LIMIT would sort every ready row: it changes the columns of
-- the index it would read in order)
SELECT id FROM {prefix}queue_tasks FORCE INDEX ({index})
 WHERE ready_priority IS NOT NULL AND ready_at <= %(now)s {queue_filter}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: claim_take
-- step 2, the atomic part: each row is re-checked under its row lock, so a row another
-- claim took first is passed over (never claimed twice); (locked_by, next_run, updated) =
-- (worker, until, now) is this claim's token
UPDATE {prefix}queue_tasks
   SET status = 'processing', attempts = attempts + 1, locked_by = %(worker)s,
       locked_until = %(until)s, next_run = %(until)s, updated = %(now)s
 WHERE id IN ({ids}) AND status = 'pending' AND next_run <= %(now)s

-- name: claim_read_back
SELECT id, queue, task_name, payload, attempts, max_attempts
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
 WHERE status = 'processing' AND next_run = %(until)s
   AND locked_by = %(worker)s AND updated = %(now)s

-- name: ready_state
-- the server's now, the earliest pending next_run and the earliest lease expiry: two
-- probes of the due index
SELECT {now},
       (SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'pending'),
       (SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'processing')

-- name: ready_state_queues
-- with a --queues filter: the earliest pending next_run of those queues reads their part
-- of queue_ready (index only, but every pending row of those queues: next_due is an
-- idle-time call; has_ready_queues is the cheap one)
SELECT {now},
       (SELECT MIN(ready_at) FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
         WHERE ready_priority IS NOT NULL {queue_filter}),
       (SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'processing')

-- name: has_ready_queues
-- a due task in one of the queues (the first due row of each, a short index read while
-- work is ready), or an expired lease in any queue; one has_ready_probe per queue follows
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks WHERE status = 'processing'
                AND next_run <= {now}) {probes}

-- name: has_ready_probe
OR EXISTS (SELECT 1 FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
            WHERE queue = %(q{i})s AND ready_priority IS NOT NULL AND ready_at <= {now})

-- name: ack_done
UPDATE {prefix}queue_tasks
   SET status = 'done', locked_by = NULL, locked_until = NULL, next_run = {now},
       updated = {now}
 WHERE id IN ({ids}) AND locked_by = %(worker)s AND status = 'processing'

-- name: retry
-- a "WHEN id THEN value" list per column, built by the backend
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       next_run = {now} + CASE id {delay_cases} END,
       updated = {now},
       last_error = CASE id {message_cases} END,
       errors = JSON_ARRAY_APPEND(COALESCE(errors, '[]'), '$',
                                  JSON_EXTRACT(CASE id {error_cases} END, '$'))
 WHERE id IN ({ids}) AND locked_by = %(worker)s AND status = 'processing'

-- name: release
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = GREATEST(attempts - 1, 0), next_run = {now}, updated = {now}
 WHERE id IN ({ids}) AND locked_by = %(worker)s AND status = 'processing'

-- name: bury_mark
-- the task row stays as the record (status 'dead'); the dead letter is copied from it
UPDATE {prefix}queue_tasks
   SET status = 'dead', locked_by = NULL, locked_until = NULL, updated = {now},
       next_run = {now},
       last_error = %(message)s,
       errors = JSON_ARRAY_APPEND(COALESCE(errors, '[]'), '$', JSON_EXTRACT(%(error)s, '$')),
       dead_letter_id = NULL
 WHERE id = %(id)s AND status = 'processing' AND locked_by = %(worker)s

-- name: bury_copy
INSERT INTO {prefix}queue_dead_letters
    (task_id, queue, task_name, payload, priority, attempts, max_attempts, error, reason,
     fingerprint, created, died_at, errors, unique_key)
SELECT id, queue, task_name, payload, priority, attempts,
       COALESCE(max_attempts, %(max_attempts)s), %(message)s, %(reason)s,
       %(fingerprint)s, created, updated, errors, unique_key
  FROM {prefix}queue_tasks
 WHERE id = %(id)s

-- name: bury_link
UPDATE {prefix}queue_tasks SET dead_letter_id = LAST_INSERT_ID() WHERE id = %(id)s

-- name: renew
UPDATE {prefix}queue_tasks
   SET locked_until = {now} + %(lease)s, next_run = {now} + %(lease)s
 WHERE id IN ({ids}) AND locked_by = %(worker)s AND status = 'processing'

-- name: held
SELECT id FROM {prefix}queue_tasks
 WHERE id IN ({ids}) AND locked_by = %(worker)s AND status = 'processing'

-- name: heartbeat
INSERT INTO {prefix}queue_workers
    (id, host, pid, version, queues, concurrency, running, done, started, last_beat)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s, %(concurrency)s, %(running)s,
        %(done)s, %(started)s, {now})
ON DUPLICATE KEY UPDATE running = %(running)s, done = %(done)s, last_beat = {now}

-- name: remove_worker
DELETE FROM {prefix}queue_workers WHERE id = %(id)s

-- name: workers
SELECT id, host, pid, version, queues, concurrency, running, done, started, last_beat, {now}
  FROM {prefix}queue_workers ORDER BY started, id

-- name: max_id
SELECT MAX(id) FROM {prefix}queue_tasks

-- name: prune_done
-- never the newest row (%(below)s is max(id)): ids are never handed out twice, even on
-- servers that reset AUTO_INCREMENT to max(id) + 1 on restart (MySQL before 8.0)
DELETE FROM {prefix}queue_tasks
 WHERE status = 'done' AND next_run < {now} - %(age)s AND id < %(below)s
 LIMIT %(batch)s

-- name: prune_workers
DELETE FROM {prefix}queue_workers WHERE last_beat < {now} - %(age)s

-- name: get_task
SELECT * FROM {prefix}queue_tasks WHERE id = %(id)s

-- name: get_dead_by_task
SELECT * FROM {prefix}queue_dead_letters WHERE task_id = %(id)s ORDER BY id DESC LIMIT 1

-- name: get_dead
SELECT * FROM {prefix}queue_dead_letters WHERE id = %(id)s

-- name: count_tasks
-- a scan of the table (the done rows too), as on SQLite
SELECT queue, status, COUNT(*),
       SUM(status = 'pending' AND next_run <= {now}),
       MIN(CASE WHEN status = 'pending' AND next_run <= {now} THEN next_run END),
       {now}
  FROM {prefix}queue_tasks
 WHERE status IN ('pending', 'processing', 'done')
 GROUP BY status, queue

-- name: count_dead
SELECT queue, COUNT(*) FROM {prefix}queue_dead_letters
 WHERE status = 'dead' GROUP BY queue

-- name: list_tasks
-- dead-lettered rows are listed through the dead letters (status 'dead')
SELECT * FROM {prefix}queue_tasks
 WHERE (status = %(status)s OR (%(status)s IS NULL AND status IN ('pending', 'processing', 'done')))
   AND (%(queue)s IS NULL OR queue = %(queue)s)
   AND (%(name)s IS NULL OR task_name = %(name)s)
 ORDER BY id DESC LIMIT %(limit)s

-- name: list_dead
SELECT * FROM {prefix}queue_dead_letters
 WHERE (%(all)s OR status = 'dead')
   AND (%(name)s IS NULL OR task_name = %(name)s)
   AND (%(queue)s IS NULL OR queue = %(queue)s)
   AND (%(text)s IS NULL OR LOCATE(LOWER(%(text)s), LOWER(error)) > 0)
 ORDER BY died_at DESC, id DESC LIMIT %(limit)s

-- name: lock_dead
SELECT task_id, queue, task_name, payload, priority, max_attempts, created, errors, unique_key
  FROM {prefix}queue_dead_letters WHERE id = %(id)s AND status = 'dead' FOR UPDATE

-- name: mark_requeued
UPDATE {prefix}queue_dead_letters SET status = 'requeued', requeued_at = {now}
 WHERE id = %(id)s

-- name: revive
UPDATE {prefix}queue_tasks
   SET status = 'pending', attempts = 0, next_run = {now}, updated = {now},
       locked_by = NULL, locked_until = NULL, unique_key = %(unique_key)s,
       dead_letter_id = %(dead_id)s
 WHERE id = %(task_id)s AND status IN ('dead', 'discarded')

-- name: task_exists
SELECT 1 FROM {prefix}queue_tasks WHERE id = %(task_id)s

-- name: reinsert
INSERT INTO {prefix}queue_tasks
    (id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
     created, updated, errors, unique_key, dead_letter_id)
VALUES (%(task_id)s, %(queue)s, %(task_name)s, %(payload)s, %(priority)s, 'pending', 0,
        %(max_attempts)s, {now}, %(created)s, {now}, %(errors)s, %(unique_key)s, %(dead_id)s)

-- name: mark_discarded
UPDATE {prefix}queue_dead_letters SET status = 'discarded', discarded_at = {now}
 WHERE id = %(id)s

-- name: lock_dead_for_discard
SELECT task_id FROM {prefix}queue_dead_letters WHERE id = %(id)s AND status = 'dead' FOR UPDATE

-- name: discard_task
UPDATE {prefix}queue_tasks SET status = 'discarded', updated = {now}
 WHERE id = %(task_id)s AND status = 'dead'

-- name: select_dead_ids
SELECT id FROM {prefix}queue_dead_letters
 WHERE status = 'dead'
   AND (%(name)s IS NULL OR task_name = %(name)s)
   AND (%(queue)s IS NULL OR queue = %(queue)s)
 ORDER BY id
