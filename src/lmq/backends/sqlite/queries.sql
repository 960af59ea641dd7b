-- Every statement the SQLite backend runs, by name.  {prefix} is the table prefix;
-- {queue_filter} (claim, has_ready) is "", "AND queue = ?"-style text built from the
-- worker's fixed --queues list.  Parameters are named (:now, :worker...).

-- name: schema_version
SELECT value FROM {prefix}queue_meta WHERE key = 'schema_version'

-- name: set_schema_version
INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', :version)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: table_exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name

-- name: insert_task
-- ?1..?8 are the fields of models.NewTask in order: task_name, payload_json, queue,
-- priority, max_attempts, run_at (epoch or NULL = now), delay, unique_key; ?9 is now
-- (epoch seconds) and ?10 the same as UTC text for `created` (bound rather than the
-- column default: strftime() per row costs a sixth of a bulk insert).
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, created)
VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, ?9) + ?7, ?9, ?8, ?10)

-- name: insert_task_unique
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, created)
VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, ?9) + ?7, ?9, ?8, ?10)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'processing')
DO NOTHING
RETURNING id

-- name: find_unique
SELECT id FROM {prefix}queue_tasks
 WHERE unique_key = ? AND status IN ('pending', 'processing')

-- name: last_id
SELECT last_insert_rowid()

-- name: claim
UPDATE {prefix}queue_tasks
   SET status = 'processing',
       attempts = attempts + 1,
       locked_by = :worker,
       locked_until = :now + :lease,
       updated = :now
 WHERE id IN (SELECT id FROM {prefix}queue_tasks
               WHERE status = 'pending' AND next_run <= :now {queue_filter}
               ORDER BY priority DESC, next_run, id
               LIMIT :limit)
RETURNING id, queue, task_name, payload, attempts, max_attempts

-- name: has_ready
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks
                WHERE status = 'pending' AND next_run <= :now {queue_filter})
    OR EXISTS (SELECT 1 FROM {prefix}queue_tasks
                WHERE status = 'processing' AND locked_until <= :now)

-- name: next_due
SELECT min(next_run) FROM {prefix}queue_tasks WHERE status = 'pending' {queue_filter}

-- name: next_lease_expiry
SELECT min(locked_until) FROM {prefix}queue_tasks WHERE status = 'processing'

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

-- name: bury_copy
INSERT INTO {prefix}queue_dead_letters
    (task_id, queue, task_name, payload, priority, attempts, max_attempts, error, reason,
     fingerprint, created, died_at, errors, unique_key)
SELECT id, queue, task_name, payload, priority, attempts,
       COALESCE(max_attempts, :max_attempts), :message, :reason,
       :fingerprint, created, :now,
       json_insert(COALESCE(errors, '[]'), '$[#]', json(:error)), unique_key
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
 WHERE status IN ('pending', 'processing', 'done')
 GROUP BY queue, status

-- name: count_dead
SELECT queue, count(*) AS n FROM {prefix}queue_dead_letters
 WHERE status = 'dead' GROUP BY queue

-- name: list_tasks
-- dead-lettered rows are listed through the dead letters (status 'dead')
SELECT * FROM {prefix}queue_tasks
 WHERE (status = :status OR (:status IS NULL AND status IN ('pending', 'processing', 'done')))
   AND (:queue IS NULL OR queue = :queue)
   AND (:name IS NULL OR task_name = :name)
 ORDER BY id DESC LIMIT :limit

-- name: list_dead
SELECT * FROM {prefix}queue_dead_letters
 WHERE (:all OR status = 'dead')
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
   AND (:text IS NULL OR instr(lower(error), lower(:text)) > 0)
 ORDER BY died_at DESC, id DESC LIMIT :limit

-- name: mark_requeued
UPDATE {prefix}queue_dead_letters SET status = 'requeued', requeued_at = :now
 WHERE id = :id AND status = 'dead'
RETURNING task_id, queue, task_name, payload, priority, max_attempts, created, errors, unique_key

-- name: revive
UPDATE {prefix}queue_tasks
   SET status = 'pending', attempts = 0, next_run = :now, updated = :now,
       locked_by = NULL, locked_until = NULL, unique_key = :unique_key,
       dead_letter_id = :dead_id
 WHERE id = :task_id AND status IN ('dead', 'discarded')

-- name: reinsert
INSERT INTO {prefix}queue_tasks
    (id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
     created, updated, errors, unique_key, dead_letter_id)
VALUES (:task_id, :queue, :task_name, :payload, :priority, 'pending', 0, :max_attempts,
        :now, :created, :now, :errors, :unique_key, :dead_id)

-- name: mark_discarded
UPDATE {prefix}queue_dead_letters SET status = 'discarded', discarded_at = :now
 WHERE id = :id AND status = 'dead'
RETURNING task_id

-- name: discard_task
UPDATE {prefix}queue_tasks SET status = 'discarded', updated = :now
 WHERE id = :task_id AND status = 'dead'

-- name: select_dead_ids
SELECT id FROM {prefix}queue_dead_letters
 WHERE status = 'dead'
   AND (:name IS NULL OR task_name = :name)
   AND (:queue IS NULL OR queue = :queue)
 ORDER BY id
