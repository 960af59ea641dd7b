-- Every statement the MySQL/MariaDB backend runs, by name.  {prefix} is the table prefix;
-- {now} is the server's clock as epoch seconds (see schema.sql); {queue_filter} is "" or
-- "AND queue IN (...)" built from the worker's fixed --queues list (or "AND queue NOT IN
-- (...)" for the paused queues of a worker of every queue); {ids} is a list of
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
-- next_run = COALESCE(run_at, now) + delay, unique_key, batch), built by the backend
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, batch, updated,
     created)
VALUES

-- name: insert_row
(%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, %s, {now}, UTC_TIMESTAMP())

-- name: insert_unique
-- a live task with this key already: its id, through LAST_INSERT_ID(expr)
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, batch, updated,
     created)
VALUES (%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, %s, {now}, UTC_TIMESTAMP())
ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)

-- name: upsert_batch
-- (name, total, on_complete task, payload, queue, then total, payload, queue, task again
-- for an existing batch: assignments run left to right, so the follow-up's payload and
-- queue are replaced only while it has no follow-up task)
INSERT INTO {prefix}queue_batches
    (name, total, created, on_complete_task, on_complete_payload, on_complete_queue)
VALUES (%s, %s, {now}, %s, %s, %s)
ON DUPLICATE KEY UPDATE
    total = total + %s,
    on_complete_payload = IF(on_complete_task IS NULL, %s, on_complete_payload),
    on_complete_queue = IF(on_complete_task IS NULL, %s, on_complete_queue),
    on_complete_task = COALESCE(on_complete_task, %s)

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

-- name: claim_pick_sorted
-- step 1 for one queue of several (UNION ALL of these, merged by the backend): a worker of
-- every queue but the paused ones never walks past the paused queues' ready rows
SELECT id, ready_priority, ready_at
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
 WHERE queue = %(q{i})s AND ready_priority IS NOT NULL AND ready_at <= %(now)s
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: queue_names
-- every queue name with a row: a loose index scan of queue_ready (one dive per name)
SELECT DISTINCT queue FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)

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

-- name: ready_state_excluding
-- every queue but the paused ones: the first pending row in due order that is not in them
SELECT {now},
       (SELECT next_run FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
         WHERE status = 'pending' {queue_filter} ORDER BY status, next_run LIMIT 1),
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
-- (done and cancelled rows: next_run is when they finished or were cancelled)
DELETE FROM {prefix}queue_tasks
 WHERE status IN ('done', 'cancelled') AND next_run < {now} - %(age)s AND id < %(below)s
 LIMIT %(batch)s

-- name: prune_dead_select
-- dead letters re-queued, discarded or rejected longer ago than the retention
SELECT id, task_id FROM {prefix}queue_dead_letters
 WHERE (status = 'requeued' AND requeued_at < {now} - %(age)s)
    OR (status = 'discarded' AND discarded_at < {now} - %(age)s)
    OR (review = 'rejected' AND status = 'dead' AND reviewed_at < {now} - %(age)s)
 LIMIT %(batch)s
   FOR UPDATE

-- name: prune_dead_tasks
-- their task rows, where the row is still that letter's record
DELETE FROM {prefix}queue_tasks
 WHERE id IN ({task_ids}) AND status IN ('dead', 'discarded') AND dead_letter_id IN ({ids})

-- name: prune_dead
DELETE FROM {prefix}queue_dead_letters WHERE id IN ({ids})

-- name: prune_batches
-- completed batches older than the retention whose members are all gone
DELETE FROM {prefix}queue_batches
 WHERE completed < {now} - %(age)s
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t
                    WHERE t.batch = {prefix}queue_batches.name)
 LIMIT %(batch)s

-- name: prune_workers
DELETE FROM {prefix}queue_workers WHERE last_beat < {now} - %(age)s

-- name: get_task
SELECT * FROM {prefix}queue_tasks WHERE id = %(id)s

-- name: get_dead_by_task
SELECT * FROM {prefix}queue_dead_letters WHERE task_id = %(id)s ORDER BY id DESC LIMIT 1

-- name: get_dead
SELECT * FROM {prefix}queue_dead_letters WHERE id = %(id)s

-- name: count_live
-- the rows that are not done, through the due index (not a done row is read); dead and
-- discarded task rows only to be told apart from the done ones (count_unready)
SELECT queue, status, COUNT(*),
       SUM(status = 'pending' AND next_run <= {now}),
       MIN(CASE WHEN status = 'pending' AND next_run <= {now} THEN next_run END),
       {now}
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
 WHERE status IN ('pending', 'processing', 'cancelled', 'dead', 'discarded')
 GROUP BY status, queue

-- name: count_unready
-- every row not pending, by queue: an index-only scan (done = these less count_live's)
SELECT queue, COUNT(*)
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
 WHERE ready_priority IS NULL
 GROUP BY queue

-- name: count_dead
SELECT queue, COUNT(*) FROM {prefix}queue_dead_letters
 WHERE status = 'dead' GROUP BY queue

-- name: list_tasks
-- dead-lettered rows are listed through the dead letters (status 'dead')
SELECT * FROM {prefix}queue_tasks
 WHERE (status = %(status)s
        OR (%(status)s IS NULL AND status IN ('pending', 'processing', 'done', 'cancelled')))
   AND (%(queue)s IS NULL OR queue = %(queue)s)
   AND (%(name)s IS NULL OR task_name = %(name)s)
 ORDER BY id DESC LIMIT %(limit)s

-- name: list_dead
SELECT * FROM {prefix}queue_dead_letters
 WHERE (%(all)s OR status = 'dead')
   AND (%(name)s IS NULL OR task_name = %(name)s)
   AND (%(queue)s IS NULL OR queue = %(queue)s)
   AND (%(text)s IS NULL OR LOCATE(LOWER(%(text)s), LOWER(error)) > 0)
   AND (%(fp)s IS NULL OR fingerprint = %(fp)s)
 ORDER BY died_at DESC, id DESC LIMIT %(limit)s

-- name: dead_groups
-- status-'dead' letters by fingerprint, largest group first, then the newest; MAX(id) is
-- one member (the example)
SELECT COALESCE(fingerprint, ''), COUNT(*), MIN(died_at), MAX(died_at), MAX(id)
  FROM {prefix}queue_dead_letters
 WHERE status = 'dead'
   AND (%(name)s IS NULL OR task_name = %(name)s)
   AND (%(queue)s IS NULL OR queue = %(queue)s)
   AND (%(text)s IS NULL OR LOCATE(LOWER(%(text)s), LOWER(error)) > 0)
   AND (%(fp)s IS NULL OR fingerprint = %(fp)s)
 GROUP BY COALESCE(fingerprint, '')
 ORDER BY COUNT(*) DESC, MAX(died_at) DESC, COALESCE(fingerprint, '')
 LIMIT %(limit)s

-- name: group_examples
SELECT id, task_name, error FROM {prefix}queue_dead_letters WHERE id IN ({ids})

-- name: lock_dead_rows
-- the letters a selector names or matches ({where}), oldest death first, locked
SELECT id, task_id, queue, task_name, payload, priority, max_attempts, created, errors,
       unique_key, died_at
  FROM {prefix}queue_dead_letters
 WHERE status = 'dead' AND {where}
 ORDER BY died_at, id
   FOR UPDATE

-- name: lock_approved
-- approved letters whose time has come, oldest requeue_at first ({skip_locked}: SKIP
-- LOCKED where the server has it; else the lock waits and re-reads the row)
SELECT id, task_id, queue, task_name, payload, priority, max_attempts, created, errors,
       unique_key
  FROM {prefix}queue_dead_letters FORCE INDEX ({prefix}queue_dead_letters_approved)
 WHERE review = 'approved' AND status = 'dead' AND requeue_at <= {now}
 ORDER BY review, status, requeue_at, id
 LIMIT %(limit)s
   FOR UPDATE {skip_locked}

-- name: approved_due
SELECT EXISTS (SELECT 1 FROM {prefix}queue_dead_letters
                WHERE review = 'approved' AND status = 'dead' AND requeue_at <= {now})

-- name: mark_requeued
UPDATE {prefix}queue_dead_letters SET status = 'requeued', requeued_at = {now}
 WHERE id IN ({ids}) AND status = 'dead'

-- name: revive_many
-- the letters' task rows back to pending ({due_cases}: seconds from now per task id;
-- {dead_cases}: the letter of each), attempts reset, the error history kept
UPDATE {prefix}queue_tasks
   SET status = 'pending', attempts = 0, next_run = {now} + CASE id {due_cases} END,
       updated = {now}, locked_by = NULL, locked_until = NULL,
       dead_letter_id = CASE id {dead_cases} END,
       payload = COALESCE(%(payload)s, payload)
 WHERE id IN ({ids}) AND status IN ('dead', 'discarded')

-- name: revive
-- one letter with a unique key (NULL here when a live task already holds it)
UPDATE {prefix}queue_tasks
   SET status = 'pending', attempts = 0, next_run = {now} + %(due)s, updated = {now},
       locked_by = NULL, locked_until = NULL, unique_key = %(unique_key)s,
       dead_letter_id = %(dead_id)s, payload = COALESCE(%(payload)s, payload)
 WHERE id = %(task_id)s AND status IN ('dead', 'discarded')

-- name: tasks_present
SELECT id FROM {prefix}queue_tasks WHERE id IN ({ids})

-- name: reinsert
INSERT INTO {prefix}queue_tasks
    (id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
     created, updated, errors, unique_key, dead_letter_id)
VALUES (%(task_id)s, %(queue)s, %(task_name)s, %(payload)s, %(priority)s, 'pending', 0,
        %(max_attempts)s, {now} + %(due)s, %(created)s, {now}, %(errors)s, %(unique_key)s,
        %(dead_id)s)

-- name: review_dead
-- {requeue_at}: NULL (reject), or when each approved letter is re-queued
UPDATE {prefix}queue_dead_letters
   SET review = %(review)s, reviewed_by = %(by)s, reviewed_at = {now},
       review_note = %(note)s, requeue_at = {requeue_at}
 WHERE id IN ({ids}) AND status = 'dead'

-- name: mark_discarded
UPDATE {prefix}queue_dead_letters SET status = 'discarded', discarded_at = {now}
 WHERE id IN ({ids}) AND status = 'dead'

-- name: discard_task
UPDATE {prefix}queue_tasks SET status = 'discarded', updated = {now}
 WHERE id IN ({ids}) AND status = 'dead'

-- name: lock_tasks
SELECT id, status FROM {prefix}queue_tasks WHERE id IN ({ids}) ORDER BY id FOR UPDATE

-- name: select_cancel
-- the pending tasks of a task name / queue / batch ({where}), locked
SELECT id FROM {prefix}queue_tasks WHERE status = 'pending' AND {where} ORDER BY id FOR UPDATE

-- name: cancel
-- next_run = now: when it was cancelled (pruned after the done retention, like done rows)
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', locked_by = NULL, locked_until = NULL, next_run = {now},
       updated = {now}
 WHERE id IN ({ids}) AND status = 'pending'

-- name: pause_queue
-- paused_at is assigned first, so it reads the old paused: pausing twice keeps the first
INSERT INTO {prefix}queue_queues (name, paused, paused_at) VALUES (%(name)s, 1, {now})
ON DUPLICATE KEY UPDATE paused_at = IF(paused = 1, paused_at, {now}), paused = 1

-- name: resume_queue
UPDATE {prefix}queue_queues SET paused = 0, paused_at = NULL WHERE name = %(name)s

-- name: paused_queues
SELECT name, paused_at FROM {prefix}queue_queues WHERE paused = 1

-- name: get_batch
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches WHERE name = %(name)s

-- name: list_batches
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches ORDER BY created DESC, name DESC LIMIT %(limit)s

-- name: batch_members
-- member counts by status (an index-only read of queue_tasks_batch), and the newest
-- finish of a done or dead member
SELECT batch, status, COUNT(*),
       MAX(CASE WHEN status IN ('done', 'dead') THEN updated END)
  FROM {prefix}queue_tasks
 WHERE batch IN %(names)s
 GROUP BY batch, status

-- name: open_batches
-- batches not yet complete with no member pending or processing (the completed index
-- finds the open ones; with none open this reads one index entry)
SELECT name FROM {prefix}queue_batches b
 WHERE completed IS NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t
                    WHERE t.batch = b.name AND t.status IN ('pending', 'processing'))

-- name: settle_batch
-- the compare-and-set: only one caller sees a row changed
UPDATE {prefix}queue_batches
   SET completed = {now}
 WHERE name = %(name)s AND completed IS NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t
                    WHERE t.batch = %(name)s AND t.status IN ('pending', 'processing'))

-- name: batch_followup
SELECT on_complete_task, on_complete_payload, on_complete_queue
  FROM {prefix}queue_batches WHERE name = %(name)s

-- name: insert_followup
INSERT INTO {prefix}queue_tasks (task_name, payload, queue, next_run, updated, created)
VALUES (%(task_name)s, %(payload)s, %(queue)s, {now}, {now}, UTC_TIMESTAMP())

-- name: set_followup
UPDATE {prefix}queue_batches SET followup_id = %(id)s WHERE name = %(name)s
