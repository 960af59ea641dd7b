-- Every statement the SQLite backend runs, by name.  {prefix} is the table prefix;
-- {queue_filter} (claim, has_ready, next_due) is "", "AND queue = :q0"-style text built
-- from the worker's fixed --queues list and its paused queues ("AND queue NOT IN (:x0)"),
-- {exclude_filter} the paused queues alone.  {gate} is one of the gate_* conditions
-- below: which tasks a claim of that kind may take.  Parameters are named (:now...).

-- name: gate_plain
-- a plain claim: no rate key, and not behind a breaker whose stored state is not closed
-- (`breaker` is in the ready indexes: for the many tasks without one, no table lookup)
AND t.rate_key IS NULL
AND (t.breaker IS NULL
     OR NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers AS b
                     WHERE b.name = t.breaker AND b.state <> 'closed'))

-- name: gate_probe
-- a probe claim: that breaker's tasks, whatever its state
AND t.breaker = :breaker

-- name: gate_rate
-- a rate claim: that key's tasks, not behind a breaker that is not closed
AND t.rate_key = :rate_key
AND (t.breaker IS NULL
     OR NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers AS b
                     WHERE b.name = t.breaker AND b.state <> 'closed'))

-- name: gate_probe_rate
AND t.breaker = :breaker AND t.rate_key = :rate_key

-- name: schema_version
SELECT value FROM {prefix}queue_meta WHERE key = 'schema_version'

-- name: set_schema_version
INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', :version)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: table_exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name

-- name: insert_task
-- ?1..?11 are the fields of models.NewTask in order: task_name, payload_json, queue,
-- priority, max_attempts, run_at (epoch or NULL = now), delay, unique_key, batch,
-- breaker, rate_key; ?12 is now (epoch seconds) and ?13 the same as UTC text for
-- `created` (bound rather than the column default: strftime() per row costs a sixth of a
-- bulk insert).
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, batch,
     breaker, rate_key, created)
VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, ?12) + ?7, ?12, ?8, ?9, ?10, ?11, ?13)

-- name: insert_task_unique
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, batch,
     breaker, rate_key, created)
VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, ?12) + ?7, ?12, ?8, ?9, ?10, ?11, ?13)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'processing')
DO NOTHING
RETURNING id

-- name: find_unique
SELECT id FROM {prefix}queue_tasks
 WHERE unique_key = ? AND status IN ('pending', 'processing')

-- name: last_id
SELECT last_insert_rowid()

-- name: claim
-- the gate: plain (the ready index), probe (the breaker index) or rate (the rate-key index)
UPDATE {prefix}queue_tasks
   SET status = 'processing',
       attempts = attempts + 1,
       locked_by = :worker,
       locked_until = :now + :lease,
       updated = :now
 WHERE id IN (SELECT id FROM {prefix}queue_tasks AS t
               WHERE status = 'pending' AND next_run <= :now {queue_filter} {gate}
               ORDER BY priority DESC, next_run, id
               LIMIT :limit)
RETURNING id, queue, task_name, payload, attempts, max_attempts, breaker, rate_key

-- name: claim_candidates
-- with paused queues: one unpaused queue's first ready rows, in claim order (the
-- per-queue index), merged with the other queues' by the backend (plain claims only)
SELECT priority, next_run, id FROM {prefix}queue_tasks AS t
 WHERE status = 'pending' AND queue = :queue AND next_run <= :now {gate}
 ORDER BY priority DESC, next_run, id
 LIMIT :limit

-- name: claim_ids
UPDATE {prefix}queue_tasks
   SET status = 'processing',
       attempts = attempts + 1,
       locked_by = :worker,
       locked_until = :now + :lease,
       updated = :now
 WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending'
RETURNING id, queue, task_name, payload, attempts, max_attempts, breaker, rate_key

-- name: first_pending_queue
-- a loose scan of the per-queue index: the queues that have pending rows (that a plain
-- claim may see), one step each
SELECT queue FROM {prefix}queue_tasks INDEXED BY {prefix}queue_tasks_queue_ready
 WHERE status = 'pending' AND rate_key IS NULL ORDER BY queue LIMIT 1

-- name: next_pending_queue
SELECT queue FROM {prefix}queue_tasks INDEXED BY {prefix}queue_tasks_queue_ready
 WHERE status = 'pending' AND rate_key IS NULL AND queue > :after ORDER BY queue LIMIT 1

-- has_ready, next_due and their parts: what a plain claim may take ({gate} = gate_plain)

-- name: has_expired
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks AS t
                WHERE status = 'processing' AND locked_until <= :now {exclude_filter} {gate})

-- name: has_ready
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks AS t
                WHERE status = 'pending' AND next_run <= :now {queue_filter} {gate})
    OR EXISTS (SELECT 1 FROM {prefix}queue_tasks AS t
                WHERE status = 'processing' AND locked_until <= :now {exclude_filter} {gate})

-- name: next_due
SELECT min(next_run) FROM {prefix}queue_tasks AS t
 WHERE status = 'pending' {queue_filter} {gate}

-- name: next_lease_expiry
SELECT min(locked_until) FROM {prefix}queue_tasks AS t
 WHERE status = 'processing' {exclude_filter} {gate}

-- name: rate_keys_ready
-- each rate key with claimable tasks (pending, or an expired lease), not behind a
-- blocked breaker: its earliest due time and the task_name of that task (SQLite takes a
-- bare column from the row that gave the min())
SELECT rate_key, min(due), task_name FROM (
    SELECT rate_key, next_run AS due, task_name FROM {prefix}queue_tasks AS t
     WHERE status = 'pending' AND rate_key IS NOT NULL {queue_filter}
       AND (t.breaker IS NULL
            OR NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers AS b
                            WHERE b.name = t.breaker AND b.state <> 'closed'))
    UNION ALL
    SELECT rate_key, locked_until AS due, task_name FROM {prefix}queue_tasks AS t
     WHERE status = 'processing' AND locked_until <= :now AND rate_key IS NOT NULL
           {queue_filter}
       AND (t.breaker IS NULL
            OR NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers AS b
                            WHERE b.name = t.breaker AND b.state <> 'closed')))
 GROUP BY rate_key
 ORDER BY min(due), rate_key
 LIMIT 100

-- name: expired
SELECT id, attempts, locked_by
  FROM {prefix}queue_tasks
 WHERE status = 'processing' AND locked_until <= :now

-- name: rescue
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       next_run = :now, updated = :now, last_error = :message,
       errors = json_insert(COALESCE(errors, '[]'), '$[#]', json(:error))
 WHERE id = :id AND status = 'processing' AND locked_until <= :now

-- name: ack_done
UPDATE {prefix}queue_tasks
   SET status = 'done', locked_by = NULL, locked_until = NULL, updated = :now
 WHERE id IN (SELECT value FROM json_each(:ids))
   AND locked_by = :worker AND status = 'processing'

-- name: ack_done_delete
DELETE FROM {prefix}queue_tasks
 WHERE id IN (SELECT value FROM json_each(:ids))
   AND locked_by = :worker AND status = 'processing'

-- name: retry
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       next_run = :now + :delay, updated = :now, last_error = :message,
       errors = json_insert(COALESCE(errors, '[]'), '$[#]', json(:error))
 WHERE id = :id AND locked_by = :worker AND status = 'processing'

-- name: release
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = max(attempts - 1, 0), next_run = :now, updated = :now
 WHERE id IN (SELECT value FROM json_each(:ids))
   AND locked_by = :worker AND status = 'processing'

-- name: defer
-- held back by a breaker or rate limit, not run: as a release, later, keys written
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = max(attempts - 1, 0), next_run = :now + :delay, updated = :now,
       breaker = COALESCE(:breaker, breaker), rate_key = COALESCE(:rate_key, rate_key)
 WHERE id = :id AND locked_by = :worker AND status = 'processing'

-- name: bury_copy
INSERT INTO {prefix}queue_dead_letters
    (task_id, queue, task_name, payload, priority, attempts, max_attempts, error, reason,
     fingerprint, created, died_at, errors, unique_key, breaker, rate_key)
SELECT id, queue, task_name, payload, priority, attempts,
       COALESCE(max_attempts, :max_attempts), :message, :reason,
       :fingerprint, created, :now,
       json_insert(COALESCE(errors, '[]'), '$[#]', json(:error)), unique_key, breaker, rate_key
  FROM {prefix}queue_tasks
 WHERE id = :id AND status = 'processing' AND (locked_by = :worker OR :worker IS NULL)

-- name: bury_mark
-- the task row stays as the record (status 'dead'), linked to the dead letter just made
UPDATE {prefix}queue_tasks
   SET status = 'dead', locked_by = NULL, locked_until = NULL, updated = :now,
       last_error = :message,
       errors = json_insert(COALESCE(errors, '[]'), '$[#]', json(:error)),
       dead_letter_id = last_insert_rowid()
 WHERE id = :id AND status = 'processing' AND (locked_by = :worker OR :worker IS NULL)

-- name: renew
UPDATE {prefix}queue_tasks
   SET locked_until = :now + :lease
 WHERE id IN (SELECT value FROM json_each(:ids))
   AND locked_by = :worker AND status = 'processing'
RETURNING id

-- name: heartbeat
INSERT INTO {prefix}queue_workers
    (id, host, pid, version, queues, concurrency, running, done, started, last_beat)
VALUES (:id, :host, :pid, :version, :queues, :concurrency, :running, :done, :started, :now)
ON CONFLICT (id) DO UPDATE SET
    running = excluded.running, done = excluded.done, last_beat = excluded.last_beat

-- name: remove_worker
DELETE FROM {prefix}queue_workers WHERE id = :id

-- name: workers
SELECT id, host, pid, version, queues, concurrency, running, done, started, last_beat
  FROM {prefix}queue_workers ORDER BY started, id

-- name: prune_done
-- never the newest row: with a plain INTEGER PRIMARY KEY its id would be reused
DELETE FROM {prefix}queue_tasks
 WHERE id IN (SELECT id FROM {prefix}queue_tasks
               WHERE status = 'done' AND updated < :cutoff LIMIT :batch)
   AND id < (SELECT max(id) FROM {prefix}queue_tasks)

-- name: prune_cancelled
DELETE FROM {prefix}queue_tasks
 WHERE id IN (SELECT id FROM {prefix}queue_tasks
               WHERE status = 'cancelled' AND updated < :cutoff LIMIT :batch)
   AND id < (SELECT max(id) FROM {prefix}queue_tasks)

-- name: prune_dead_requeued
DELETE FROM {prefix}queue_dead_letters
 WHERE id IN (SELECT id FROM {prefix}queue_dead_letters
               WHERE status = 'requeued' AND requeued_at < :cutoff LIMIT :batch)
RETURNING id, task_id

-- name: prune_dead_discarded
DELETE FROM {prefix}queue_dead_letters
 WHERE id IN (SELECT id FROM {prefix}queue_dead_letters
               WHERE status = 'discarded' AND discarded_at < :cutoff LIMIT :batch)
RETURNING id, task_id

-- name: prune_dead_rejected
DELETE FROM {prefix}queue_dead_letters
 WHERE id IN (SELECT id FROM {prefix}queue_dead_letters
               WHERE status = 'dead' AND review = 'rejected' AND reviewed_at < :cutoff
               LIMIT :batch)
RETURNING id, task_id

-- name: prune_dead_task
-- the task row kept as the record of a pruned dead letter (never the newest row)
DELETE FROM {prefix}queue_tasks
 WHERE id = :task_id AND dead_letter_id = :dead_id AND status IN ('dead', 'discarded')
   AND id < (SELECT max(id) FROM {prefix}queue_tasks)

-- name: prune_batches
DELETE FROM {prefix}queue_batches
 WHERE name IN (SELECT name FROM {prefix}queue_batches AS b
                 WHERE completed < :cutoff
                   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks AS t
                                    WHERE t.batch = b.name)
                 LIMIT :batch)

-- name: prune_workers
DELETE FROM {prefix}queue_workers WHERE last_beat < :cutoff

-- name: get_task
SELECT * FROM {prefix}queue_tasks WHERE id = :id

-- name: get_dead_by_task
SELECT * FROM {prefix}queue_dead_letters WHERE task_id = :id ORDER BY id DESC LIMIT 1

-- name: get_dead
SELECT * FROM {prefix}queue_dead_letters WHERE id = :id

-- name: count_tasks
SELECT queue, status, count(*) AS n,
       sum(status = 'pending' AND next_run <= :now) AS ready,
       min(CASE WHEN status = 'pending' AND next_run <= :now THEN next_run END) AS oldest
  FROM {prefix}queue_tasks
 WHERE status IN ('pending', 'processing', 'done', 'cancelled')
 GROUP BY queue, status

-- name: count_dead
SELECT queue, count(*) AS n FROM {prefix}queue_dead_letters
 WHERE status = 'dead' GROUP BY queue

-- name: list_tasks
-- dead-lettered rows are listed through the dead letters (status 'dead')
SELECT * FROM {prefix}queue_tasks
 WHERE (status = :status
        OR (:status IS NULL AND status IN ('pending', 'processing', 'done', 'cancelled')))
   AND (:queue IS NULL OR queue = :queue)
   AND (:name IS NULL OR task_name = :name)
 ORDER BY id DESC LIMIT :limit

-- name: list_dead
SELECT * FROM {prefix}queue_dead_letters
 WHERE (:all OR status = 'dead')
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
   AND (:text IS NULL OR instr(lower(error), lower(:text)) > 0)
   AND (:fingerprint IS NULL OR fingerprint = :fingerprint)
 ORDER BY died_at DESC, id DESC LIMIT :limit

-- name: dead_groups
-- status-'dead' letters by fingerprint, largest first; the example is the newest member
SELECT g.fingerprint, g.n, d.task_name, d.error, d.id, g.first_seen, g.last_seen
  FROM (SELECT COALESCE(fingerprint, '') AS fingerprint, count(*) AS n,
               min(died_at) AS first_seen, max(died_at) AS last_seen, max(id) AS example
          FROM {prefix}queue_dead_letters
         WHERE status = 'dead'
           AND (:name IS NULL OR task_name = :name)
           AND (:queue IS NULL OR queue = :queue)
           AND (:text IS NULL OR instr(lower(error), lower(:text)) > 0)
           AND (:fingerprint IS NULL OR fingerprint = :fingerprint)
         GROUP BY COALESCE(fingerprint, '')) AS g
  JOIN {prefix}queue_dead_letters AS d ON d.id = g.example
 ORDER BY g.n DESC, g.last_seen DESC, g.fingerprint
 LIMIT :limit

-- name: mark_requeued
UPDATE {prefix}queue_dead_letters SET status = 'requeued', requeued_at = :now
 WHERE id = :id AND status = 'dead'
RETURNING task_id, queue, task_name, payload, priority, max_attempts, created, errors, unique_key,
          breaker, rate_key

-- name: revive
-- :due is when it runs again (now, or later with a delay/spread); :payload NULL keeps it
UPDATE {prefix}queue_tasks
   SET status = 'pending', attempts = 0, next_run = :due, updated = :now,
       locked_by = NULL, locked_until = NULL, unique_key = :unique_key,
       dead_letter_id = :dead_id, payload = COALESCE(:payload, payload),
       breaker = COALESCE(:breaker, breaker), rate_key = COALESCE(:rate_key, rate_key)
 WHERE id = :task_id AND status IN ('dead', 'discarded')

-- name: reinsert
INSERT INTO {prefix}queue_tasks
    (id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
     created, updated, errors, unique_key, dead_letter_id, breaker, rate_key)
VALUES (:task_id, :queue, :task_name, :payload, :priority, 'pending', 0, :max_attempts,
        :due, :created, :now, :errors, :unique_key, :dead_id, :breaker, :rate_key)

-- name: mark_discarded
UPDATE {prefix}queue_dead_letters SET status = 'discarded', discarded_at = :now
 WHERE id = :id AND status = 'dead'
RETURNING task_id

-- name: discard_task
UPDATE {prefix}queue_tasks SET status = 'discarded', updated = :now
 WHERE id = :task_id AND status = 'dead'

-- name: select_dead_ids
-- the letters a selector matches, oldest death first
SELECT id FROM {prefix}queue_dead_letters
 WHERE status = 'dead'
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
   AND (:fingerprint IS NULL OR fingerprint = :fingerprint)
 ORDER BY died_at, id

-- name: waiting_dead_ids
-- which of the ids given one by one are waiting dead letters, oldest death first
SELECT id FROM {prefix}queue_dead_letters
 WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'dead'
 ORDER BY died_at, id

-- name: review
UPDATE {prefix}queue_dead_letters
   SET review = :review, reviewed_by = :by, reviewed_at = :now, review_note = :note,
       requeue_at = :requeue_at
 WHERE id = :id AND status = 'dead'

-- name: approved_due
-- every worker asks about once a second: the partial index, never the status index
SELECT EXISTS (SELECT 1 FROM {prefix}queue_dead_letters
                INDEXED BY {prefix}queue_dead_letters_approved
                WHERE review = 'approved' AND status = 'dead' AND requeue_at <= :now)

-- name: approved_ids
SELECT id FROM {prefix}queue_dead_letters INDEXED BY {prefix}queue_dead_letters_approved
 WHERE review = 'approved' AND status = 'dead' AND requeue_at <= :now
 ORDER BY requeue_at, id
 LIMIT :limit

-- name: task_exists
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks WHERE id = :id)
    OR EXISTS (SELECT 1 FROM {prefix}queue_dead_letters WHERE task_id = :id)

-- name: cancel_ids
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', updated = :now
 WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending'
RETURNING id

-- name: cancel_matching
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', updated = :now
 WHERE status = 'pending'
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
   AND (:batch IS NULL OR batch = :batch)
RETURNING id

-- name: cancel_batch
-- a batch's pending members, through the (batch, status) index
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', updated = :now
 WHERE batch = :batch AND status = 'pending'
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
RETURNING id

-- name: pause_queue
INSERT INTO {prefix}queue_queues (name, paused, paused_at) VALUES (:name, 1, :now)
ON CONFLICT (name) DO UPDATE
   SET paused = 1, paused_at = CASE WHEN paused THEN paused_at ELSE excluded.paused_at END

-- name: resume_queue
UPDATE {prefix}queue_queues SET paused = 0, paused_at = NULL WHERE name = :name

-- name: paused_queues
SELECT name, paused_at FROM {prefix}queue_queues WHERE paused

-- name: batch_get
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches WHERE name = :name

-- name: batch_list
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches ORDER BY created DESC, name DESC LIMIT :limit

-- name: batch_counts
-- member counts from the task rows (through the (batch, status) index)
SELECT status, count(*), max(CASE WHEN status IN ('done', 'dead') THEN updated END)
  FROM {prefix}queue_tasks WHERE batch = :name GROUP BY status

-- name: batch_add
-- a new batch, or `total` more for an existing one (keeping its follow-up unless it had none)
INSERT INTO {prefix}queue_batches
    (name, total, created, on_complete_task, on_complete_payload, on_complete_queue)
VALUES (:name, :total, :now, :task, :payload, :queue)
ON CONFLICT (name) DO UPDATE SET
    total = total + excluded.total,
    on_complete_payload = CASE WHEN on_complete_task IS NULL
                               THEN excluded.on_complete_payload ELSE on_complete_payload END,
    on_complete_queue = CASE WHEN on_complete_task IS NULL
                             THEN excluded.on_complete_queue ELSE on_complete_queue END,
    on_complete_task = COALESCE(on_complete_task, excluded.on_complete_task)

-- name: settleable
-- open batches with no member pending or processing (cheap when none is open: the
-- completed index holds the open ones first)
SELECT name, on_complete_task, on_complete_payload, on_complete_queue
  FROM {prefix}queue_batches AS b
 WHERE completed IS NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks AS t
                    WHERE t.batch = b.name AND t.status IN ('pending', 'processing'))
 ORDER BY created, name

-- name: settle
UPDATE {prefix}queue_batches SET completed = :now WHERE name = :name AND completed IS NULL

-- name: set_followup
UPDATE {prefix}queue_batches SET followup_id = :id WHERE name = :name

-- --- circuit breakers, rate limits, schedules: compare-and-set on `version` -------------
-- *_insert stores a new row (expected version 0; nothing if one exists), *_update only
-- over the version the caller read (:expected); :version is the new one.

-- name: breakers_all
SELECT * FROM {prefix}queue_breakers ORDER BY name

-- name: breakers_named
SELECT * FROM {prefix}queue_breakers
 WHERE name IN (SELECT value FROM json_each(:names)) ORDER BY name

-- name: breaker_insert
INSERT INTO {prefix}queue_breakers
    (name, state, failures, window_start, window_calls, window_failures, cooldown,
     opened_at, retry_at, probe_by, probe_until, trips, forced, last_error, updated, version)
VALUES (:name, :state, :failures, :window_start, :window_calls, :window_failures, :cooldown,
        :opened_at, :retry_at, :probe_by, :probe_until, :trips, :forced, :last_error,
        :updated, :version)
ON CONFLICT (name) DO NOTHING

-- name: breaker_update
UPDATE {prefix}queue_breakers
   SET state = :state, failures = :failures, window_start = :window_start,
       window_calls = :window_calls, window_failures = :window_failures,
       cooldown = :cooldown, opened_at = :opened_at, retry_at = :retry_at,
       probe_by = :probe_by, probe_until = :probe_until, trips = :trips, forced = :forced,
       last_error = :last_error, updated = :updated, version = :version
 WHERE name = :name AND version = :expected

-- name: breaker_delete
DELETE FROM {prefix}queue_breakers WHERE name = :name

-- name: rate_limits_all
SELECT * FROM {prefix}queue_rate_limits ORDER BY name

-- name: rate_limits_named
SELECT * FROM {prefix}queue_rate_limits
 WHERE name IN (SELECT value FROM json_each(:names)) ORDER BY name

-- name: rate_limit_insert
INSERT INTO {prefix}queue_rate_limits (name, calls, per, burst, tat, updated, version)
VALUES (:name, :calls, :per, :burst, :tat, :updated, :version)
ON CONFLICT (name) DO NOTHING

-- name: rate_limit_update
UPDATE {prefix}queue_rate_limits
   SET calls = :calls, per = :per, burst = :burst, tat = :tat, updated = :updated,
       version = :version
 WHERE name = :name AND version = :expected

-- name: schedules_all
SELECT * FROM {prefix}queue_schedules ORDER BY name

-- name: schedule_insert
INSERT INTO {prefix}queue_schedules
    (name, task_name, queue, payload, priority, cron, every, timezone, missed, next_tick,
     last_tick, last_task_id, paused, declared, updated, version)
VALUES (:name, :task_name, :queue, :payload, :priority, :cron, :every, :timezone, :missed,
        :next_tick, :last_tick, :last_task_id, :paused, :declared, :updated, :version)
ON CONFLICT (name) DO NOTHING

-- name: schedule_update
UPDATE {prefix}queue_schedules
   SET task_name = :task_name, queue = :queue, payload = :payload, priority = :priority,
       cron = :cron, every = :every, timezone = :timezone, missed = :missed,
       next_tick = :next_tick, last_tick = :last_tick, last_task_id = :last_task_id,
       paused = :paused, declared = :declared, updated = :updated, version = :version
 WHERE name = :name AND version = :expected

-- name: schedule_set_last_task
-- fire_schedule: the id of the last task the tick enqueued (same transaction)
UPDATE {prefix}queue_schedules SET last_task_id = :id WHERE name = :name

-- name: schedule_delete
DELETE FROM {prefix}queue_schedules WHERE name = :name
