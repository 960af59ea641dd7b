-- Every statement the MySQL/MariaDB backend runs, by name.  {prefix} is the table prefix;
-- {now} is the server's clock as epoch seconds (see schema.sql); {queue_filter} is "" or
-- "AND queue IN (...)" built from the worker's fixed --queues list (or "AND queue NOT IN
-- (...)" for the paused queues of a worker of every queue); {ids} is a list of
-- integer ids formatted by the backend; {breaker_ok} is "the task is not behind a breaker
-- whose state is not closed" (session.BREAKER_OK_SQL: for a task without a breaker, just
-- `breaker IS NULL`).  Parameters are PyMySQL's %(name)s, so a literal
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
-- next_run = COALESCE(run_at, now) + delay, unique_key, batch, breaker, rate_key), built
-- by the backend
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, batch, breaker,
     rate_key, updated, created)
VALUES

-- name: insert_row
(%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, %s, %s, %s, {now}, UTC_TIMESTAMP())

-- name: insert_unique
-- a live task with this key already: its id, through LAST_INSERT_ID(expr)
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, unique_key, batch, breaker,
     rate_key, updated, created)
VALUES (%s, %s, %s, %s, %s, COALESCE(%s, {now}) + %s, %s, %s, %s, %s, {now}, UTC_TIMESTAMP())
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
-- SKIP LOCKED: rows another claim holds are passed over, never waited for.  The index's
-- `rate_key IS NULL` part (rate-keyed tasks are never read), in order (not naming rate_key in
-- the ORDER BY: MariaDB then sorts).  The breaker check (claim_check) is the breaker_ok
-- subquery, or TRUE while no claim met a task with a breaker: MariaDB plans a subquery on
-- every execution, run or not (about a tenth of this statement's time), so the backend
-- leaves it out until a claimed row has a breaker, and then claims again with it
SELECT id, queue, task_name, payload, attempts + 1, max_attempts, breaker, rate_key
  FROM {prefix}queue_tasks FORCE INDEX ({index})
 WHERE rate_key IS NULL AND ready_priority IS NOT NULL AND ready_at <= {now} {queue_filter}
   AND {claim_check}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: claim_select_sorted
-- one queue of several (UNION ALL of these, merged by the backend): the sort key too
SELECT id, queue, task_name, payload, attempts + 1, max_attempts, breaker, rate_key,
       ready_priority, ready_at
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
 WHERE queue = %(q{i})s AND rate_key IS NULL AND ready_priority IS NOT NULL
   AND ready_at <= {now} AND {claim_check}
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
-- the index it would read in order); an index-only read without the breaker check
SELECT id FROM {prefix}queue_tasks FORCE INDEX ({index})
 WHERE rate_key IS NULL AND ready_priority IS NOT NULL AND ready_at <= %(now)s {queue_filter}
   AND {claim_check}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: claim_pick_sorted
-- step 1 for one queue of several (UNION ALL of these, merged by the backend): a worker of
-- every queue but the paused ones never walks past the paused queues' ready rows
SELECT id, ready_priority, ready_at
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
 WHERE queue = %(q{i})s AND rate_key IS NULL AND ready_priority IS NOT NULL
   AND ready_at <= %(now)s AND {claim_check}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: claim_rate_select
-- a rate claim: the key's part of the ready index, in order, none behind a breaker that
-- is not closed.  The key is compared in the column's collation: with the connection's
-- (a literal is utf8mb4_general_ci on MariaDB) the server does not see rate_key as one
-- constant and sorts the key's whole backlog (locking it all)
SELECT id, queue, task_name, payload, attempts + 1, max_attempts, breaker, rate_key
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
 WHERE rate_key = %(key)s COLLATE utf8mb4_bin AND ready_priority IS NOT NULL
   AND ready_at <= {now} {queue_filter} AND {breaker_ok}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: claim_rate_pick
-- the same for the fallback claim (step 1, a plain read)
SELECT id FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
 WHERE rate_key = %(key)s COLLATE utf8mb4_bin AND ready_priority IS NOT NULL
   AND ready_at <= %(now)s {queue_filter} AND {breaker_ok}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: claim_probe_pick
-- a probe claim (one every cool-down), step 1 of the pick-and-take claim (in both claim
-- modes: the tasks passed over are read, not locked): that breaker's due tasks, whatever
-- its state, those without a rate key first (the plain part of the ready index, in claim
-- order; gate: AND rate_key = the one given, with a rate key given too)
SELECT id FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
 WHERE rate_key IS NULL AND ready_priority IS NOT NULL AND ready_at <= %(now)s
   AND breaker = %(key)s COLLATE utf8mb4_bin {queue_filter} {gate}
 ORDER BY ready_priority, ready_at, id
 LIMIT %(limit)s

-- name: claim_probe_keyed_pick
-- then, if that found too few, those with a rate key: the pending part of each key's part
-- of the index (the keys listed; never their done rows)
SELECT id FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
 WHERE rate_key IN ({keys}) AND ready_priority IS NOT NULL AND ready_at <= %(now)s
   AND breaker = %(key)s COLLATE utf8mb4_bin {queue_filter} {gate}
 LIMIT %(limit)s

-- name: queue_names
-- every queue name with a row: a loose index scan of queue_ready (one dive per name)
SELECT DISTINCT queue FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)

-- name: claim_take
-- step 2, the atomic part: each row is re-checked under its row lock, so a row another
-- claim took first is passed over (never claimed twice); (locked_by, next_run, updated) =
-- (worker, until, now) is this claim's token.  take_check: AND breaker IS NULL after a
-- pick without the breaker check (a task with a breaker is left for a checked pick)
UPDATE {prefix}queue_tasks
   SET status = 'processing', attempts = attempts + 1, locked_by = %(worker)s,
       locked_until = %(until)s, next_run = %(until)s, updated = %(now)s
 WHERE id IN ({ids}) AND status = 'pending' AND next_run <= %(now)s {take_check}

-- name: any_breaker
-- picked ids not taken: is one of them a task with a breaker?
SELECT 1 FROM {prefix}queue_tasks WHERE id IN ({ids}) AND breaker IS NOT NULL LIMIT 1

-- name: claim_read_back
SELECT id, queue, task_name, payload, attempts, max_attempts, breaker, rate_key
  FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
 WHERE status = 'processing' AND next_run = %(until)s
   AND locked_by = %(worker)s AND updated = %(now)s

-- name: has_ready_all
-- an expired lease, or a claimable task (ready_all below: the due index's earliest
-- pending row first, one probe when nothing is due, then the ready index in claim order up
-- to the first due task not behind a breaker that is not closed)
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks WHERE status = 'processing'
                AND next_run <= {now})
    OR ({ready})

-- name: ready_state
-- next_due: the server's now; whether a plain claim would take a task now (ready_all, the
-- queues' has_ready_probes, or ready_excluding, filled in by the backend); the first plain pending row still to come, in due order, that
-- is in the queues and not behind a breaker that is not closed (a short read of the due
-- index: rows of other queues, rate-keyed or blocked ones before it are passed over); and
-- the earliest lease expiry
SELECT {now},
       {ready},
       (SELECT next_run FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
         WHERE status = 'pending' AND next_run > {now} AND rate_key IS NULL {queue_filter}
           AND {breaker_ok}
         ORDER BY next_run LIMIT 1),
       (SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'processing')

-- name: ready_all
(SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'pending') <= {now}
AND EXISTS (SELECT 1 FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
             WHERE rate_key IS NULL AND ready_priority IS NOT NULL AND ready_at <= {now}
               AND {breaker_ok})

-- name: ready_excluding
EXISTS (SELECT 1 FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
         WHERE status = 'pending' AND next_run <= {now} AND rate_key IS NULL {queue_filter}
           AND {breaker_ok})

-- name: lease_state
-- every queue paused: only an expired lease may be claimed (rescued)
SELECT {now}, FALSE, NULL,
       (SELECT MIN(next_run) FROM {prefix}queue_tasks WHERE status = 'processing')

-- name: has_ready_queues
-- a due task in one of the queues (the first due row of each, a short index read while
-- work is ready), or an expired lease in any queue; one has_ready_probe per queue follows
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks WHERE status = 'processing'
                AND next_run <= {now}) {probes}

-- name: has_ready_probe
OR EXISTS (SELECT 1 FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_queue_ready)
            WHERE queue = %(q{i})s AND rate_key IS NULL AND ready_priority IS NOT NULL
              AND ready_at <= {now} AND {breaker_ok})

-- name: rate_keys
-- the rate keys with rows: a loose scan of the ready index (one dive per key)
SELECT DISTINCT rate_key FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
 WHERE rate_key IS NOT NULL

-- name: rate_keys_ready
-- of those keys, each with claimable tasks not behind a breaker that is not closed
-- (pending rows: each key's pending part of the ready index; expired leases: the due
-- index): the earliest due time, one task name, and the server's now
SELECT lane, MIN(due), MIN(task_name), {now}
  FROM (SELECT rate_key AS lane, ready_at AS due, task_name
          FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_ready)
         WHERE rate_key IN ({keys}) AND ready_priority IS NOT NULL {queue_filter}
           AND {breaker_ok}
        UNION ALL
        SELECT rate_key, next_run, task_name
          FROM {prefix}queue_tasks FORCE INDEX ({prefix}queue_tasks_due)
         WHERE status = 'processing' AND next_run <= {now} AND rate_key IS NOT NULL
               {queue_filter} AND {breaker_ok}) AS keyed
 GROUP BY lane
 ORDER BY lane
 LIMIT 100

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

-- name: defer
-- held back by a breaker or rate limit, not run: pending again at now + its delay, the
-- attempt refunded, nothing recorded; a key given (a CASE per column, NULL when not) is
-- written into the row
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = GREATEST(attempts - 1, 0),
       next_run = {now} + CASE id {delay_cases} END, updated = {now},
       breaker = COALESCE(CASE id {breaker_cases} END, breaker),
       rate_key = COALESCE(CASE id {rate_cases} END, rate_key)
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
     fingerprint, created, died_at, errors, unique_key, breaker, rate_key)
SELECT id, queue, task_name, payload, priority, attempts,
       COALESCE(max_attempts, %(max_attempts)s), %(message)s, %(reason)s,
       %(fingerprint)s, created, updated, errors, unique_key, breaker, rate_key
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
       unique_key, died_at, breaker, rate_key
  FROM {prefix}queue_dead_letters
 WHERE status = 'dead' AND {where}
 ORDER BY died_at, id
   FOR UPDATE

-- name: lock_approved
-- approved letters whose time has come, oldest requeue_at first ({skip_locked}: SKIP
-- LOCKED where the server has it; else the lock waits and re-reads the row)
SELECT id, task_id, queue, task_name, payload, priority, max_attempts, created, errors,
       unique_key, died_at, breaker, rate_key
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
     created, updated, errors, unique_key, dead_letter_id, breaker, rate_key)
VALUES (%(task_id)s, %(queue)s, %(task_name)s, %(payload)s, %(priority)s, 'pending', 0,
        %(max_attempts)s, {now} + %(due)s, %(created)s, {now}, %(errors)s, %(unique_key)s,
        %(dead_id)s, %(breaker)s, %(rate_key)s)

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

-- --- circuit breakers, rate limits, schedules: rows swapped by compare-and-set ---------
-- A put of expected version 0 is an INSERT (a duplicate key means another worker stored
-- the row first); any other is an UPDATE guarded on the version read.  Either changes
-- exactly one row when it wins (version always changes, so "rows matched" and "rows
-- changed" agree whatever the client's FOUND_ROWS flag).

-- name: breakers
SELECT name, state, failures, window_start, window_calls, window_failures, cooldown,
       opened_at, retry_at, probe_by, probe_until, trips, forced, last_error, updated, version
  FROM {prefix}queue_breakers {where}
 ORDER BY name

-- name: insert_breaker
INSERT INTO {prefix}queue_breakers
    (name, state, failures, window_start, window_calls, window_failures, cooldown, opened_at,
     retry_at, probe_by, probe_until, trips, forced, last_error, updated, version)
VALUES (%(name)s, %(state)s, %(failures)s, %(window_start)s, %(window_calls)s,
        %(window_failures)s, %(cooldown)s, %(opened_at)s, %(retry_at)s, %(probe_by)s,
        %(probe_until)s, %(trips)s, %(forced)s, %(last_error)s, %(updated)s, %(version)s)

-- name: update_breaker
UPDATE {prefix}queue_breakers
   SET state = %(state)s, failures = %(failures)s, window_start = %(window_start)s,
       window_calls = %(window_calls)s, window_failures = %(window_failures)s,
       cooldown = %(cooldown)s, opened_at = %(opened_at)s, retry_at = %(retry_at)s,
       probe_by = %(probe_by)s, probe_until = %(probe_until)s, trips = %(trips)s,
       forced = %(forced)s, last_error = %(last_error)s, updated = %(updated)s,
       version = %(version)s
 WHERE name = %(name)s AND version = %(expected)s

-- name: delete_breaker
DELETE FROM {prefix}queue_breakers WHERE name = %(name)s

-- name: rate_limits
SELECT name, calls, per, burst, tat, updated, version
  FROM {prefix}queue_rate_limits {where}
 ORDER BY name

-- name: insert_rate_limit
INSERT INTO {prefix}queue_rate_limits (name, calls, per, burst, tat, updated, version)
VALUES (%(name)s, %(calls)s, %(per)s, %(burst)s, %(tat)s, %(updated)s, %(version)s)

-- name: update_rate_limit
UPDATE {prefix}queue_rate_limits
   SET calls = %(calls)s, per = %(per)s, burst = %(burst)s, tat = %(tat)s,
       updated = %(updated)s, version = %(version)s
 WHERE name = %(name)s AND version = %(expected)s

-- name: schedules
SELECT name, task_name, queue, payload, priority, cron, every, timezone, missed, next_tick,
       last_tick, last_task_id, paused, declared, updated, version
  FROM {prefix}queue_schedules {where}
 ORDER BY name

-- name: insert_schedule
INSERT INTO {prefix}queue_schedules
    (name, task_name, queue, payload, priority, cron, every, timezone, missed, next_tick,
     last_tick, last_task_id, paused, declared, updated, version)
VALUES (%(name)s, %(task_name)s, %(queue)s, %(payload)s, %(priority)s, %(cron)s,
        %(every)s, %(timezone)s, %(missed)s, %(next_tick)s, %(last_tick)s, %(last_task_id)s,
        %(paused)s, %(declared)s, %(updated)s, %(version)s)

-- name: update_schedule
UPDATE {prefix}queue_schedules
   SET task_name = %(task_name)s, queue = %(queue)s, payload = %(payload)s,
       priority = %(priority)s, cron = %(cron)s, every = %(every)s, timezone = %(timezone)s,
       missed = %(missed)s, next_tick = %(next_tick)s, last_tick = %(last_tick)s,
       last_task_id = %(last_task_id)s, paused = %(paused)s, declared = %(declared)s,
       updated = %(updated)s, version = %(version)s
 WHERE name = %(name)s AND version = %(expected)s

-- name: set_last_task
-- fire_schedule: the id of the last task the tick enqueued (same transaction)
UPDATE {prefix}queue_schedules SET last_task_id = %(id)s WHERE name = %(name)s

-- name: delete_schedule
DELETE FROM {prefix}queue_schedules WHERE name = %(name)s
