-- lmq's statements for PostgreSQL, loaded by name (lmq.backends.sqlfile.load_queries).
-- {prefix} is the table prefix; parameters are psycopg's %(name)s.  Every "now" is the
-- server's clock: {prefix}queue_now() (epoch seconds, constant within a statement).

-- name: schema_version
SELECT value FROM {prefix}queue_meta WHERE key = 'schema_version'

-- name: set_schema_version
INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', %(version)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value

-- name: table_exists
SELECT to_regclass(%(name)s) IS NOT NULL

-- name: migrate_lock
-- one migrator at a time per prefix and database, whichever host it runs on
SELECT pg_advisory_xact_lock(hashtextextended('lmq migrate ' || %(prefix)s, 0))

-- name: insert_one
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, batch,
     breaker, rate_key)
VALUES (%(task_name)s, %(payload)s, %(queue)s, %(priority)s, %(max_attempts)s,
        COALESCE(%(run_at)s, {prefix}queue_now()) + %(delay)s, {prefix}queue_now(), NULL,
        %(batch)s, %(breaker)s, %(rate_key)s)
RETURNING id

-- name: insert_many
-- the columns arrive as JSON arrays (encoding them is C code on both sides, unlike a list
-- of Python strings as text[]), zipped back into rows by ROWS FROM; the ids come back in
-- insertion order, which is the order of the arrays.  "now" and `created` are computed
-- once per statement (n), not per row: the column default's to_char per row cost a
-- tenth of a bulk insert
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, batch,
     breaker, rate_key, created)
SELECT u.task_name, u.payload, u.queue, u.priority::integer, u.max_attempts::integer,
       COALESCE(u.run_at::double precision, n.t) + u.delay::double precision, n.t,
       u.unique_key, u.batch, u.breaker, u.rate_key, n.c
  FROM ROWS FROM (json_array_elements_text(%(task_name)s::json),
                  json_array_elements_text(%(payload)s::json),
                  json_array_elements_text(%(queue)s::json),
                  json_array_elements_text(%(priority)s::json),
                  json_array_elements_text(%(max_attempts)s::json),
                  json_array_elements_text(%(run_at)s::json),
                  json_array_elements_text(%(delay)s::json),
                  json_array_elements_text(%(unique_key)s::json),
                  json_array_elements_text(%(batch)s::json),
                  json_array_elements_text(%(breaker)s::json),
                  json_array_elements_text(%(rate_key)s::json))
       WITH ORDINALITY
       AS u(task_name, payload, queue, priority, max_attempts, run_at, delay, unique_key,
            batch, breaker, rate_key, ord),
       (SELECT {prefix}queue_now() AS t,
               to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS c) n
 ORDER BY u.ord
RETURNING id

-- name: insert_uniform
-- the common bulk case: every row shares everything but its name and payload (one
-- enqueue_many call, its keys not computed from the payload), so only those two travel
-- as arrays
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, batch, breaker,
     rate_key, created)
SELECT u.task_name, u.payload, %(queue)s, %(priority)s, %(max_attempts)s,
       COALESCE(%(run_at)s, n.t) + %(delay)s, n.t, %(batch)s, %(breaker)s, %(rate_key)s, n.c
  FROM ROWS FROM (json_array_elements_text(%(task_name)s::json),
                  json_array_elements_text(%(payload)s::json))
       WITH ORDINALITY AS u(task_name, payload, ord),
       (SELECT {prefix}queue_now() AS t,
               to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS c) n
 ORDER BY u.ord
RETURNING id

-- name: reserve_ids
-- a bulk enqueue by COPY (which returns nothing): the ids first, from the identity
-- sequence (looked up once, not per row), with the server's "now" and `created` text for
-- every row; the rows then carry their ids.  COPY fires the statement-level trigger
-- (one notification), so workers wake as after an INSERT
WITH s AS MATERIALIZED (
    SELECT pg_get_serial_sequence('{prefix}queue_tasks', 'id')::regclass AS seq
)
SELECT {prefix}queue_now(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
       ARRAY(SELECT nextval(s.seq) FROM s, generate_series(1, %(n)s))

-- name: copy_tasks
COPY {prefix}queue_tasks
    (id, task_name, payload, queue, priority, max_attempts, next_run, updated, created,
     batch, breaker, rate_key)
FROM STDIN (FORMAT BINARY)

-- name: insert_many_unique
-- the same with unique keys: a key already pending or processing (or earlier in the same
-- batch) inserts nothing; the caller looks those ids up (find_unique)
INSERT INTO {prefix}queue_tasks
    (task_name, payload, queue, priority, max_attempts, next_run, updated, unique_key, batch,
     breaker, rate_key, created)
SELECT u.task_name, u.payload, u.queue, u.priority::integer, u.max_attempts::integer,
       COALESCE(u.run_at::double precision, n.t) + u.delay::double precision, n.t,
       u.unique_key, u.batch, u.breaker, u.rate_key, n.c
  FROM ROWS FROM (json_array_elements_text(%(task_name)s::json),
                  json_array_elements_text(%(payload)s::json),
                  json_array_elements_text(%(queue)s::json),
                  json_array_elements_text(%(priority)s::json),
                  json_array_elements_text(%(max_attempts)s::json),
                  json_array_elements_text(%(run_at)s::json),
                  json_array_elements_text(%(delay)s::json),
                  json_array_elements_text(%(unique_key)s::json),
                  json_array_elements_text(%(batch)s::json),
                  json_array_elements_text(%(breaker)s::json),
                  json_array_elements_text(%(rate_key)s::json))
       WITH ORDINALITY
       AS u(task_name, payload, queue, priority, max_attempts, run_at, delay, unique_key,
            batch, breaker, rate_key, ord),
       (SELECT {prefix}queue_now() AS t,
               to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS c) n
 ORDER BY u.ord
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'processing')
DO NOTHING
RETURNING id, unique_key

-- name: upsert_batch
-- a new batch, or more members for an existing one (which keeps its follow-up unless it
-- had none; every SET expression reads the row as it was)
INSERT INTO {prefix}queue_batches AS b
    (name, total, created, on_complete_task, on_complete_payload, on_complete_queue)
VALUES (%(name)s, %(total)s, {prefix}queue_now(), %(task)s, %(payload)s, %(queue)s)
ON CONFLICT (name) DO UPDATE SET
    total = b.total + EXCLUDED.total,
    on_complete_task = COALESCE(b.on_complete_task, EXCLUDED.on_complete_task),
    on_complete_payload = CASE WHEN b.on_complete_task IS NULL
                               THEN EXCLUDED.on_complete_payload
                               ELSE b.on_complete_payload END,
    on_complete_queue = CASE WHEN b.on_complete_task IS NULL
                             THEN EXCLUDED.on_complete_queue
                             ELSE b.on_complete_queue END

-- name: find_unique
SELECT unique_key, id FROM {prefix}queue_tasks
 WHERE unique_key = ANY(%(keys)s) AND status IN ('pending', 'processing')

-- name: plan_by_index
-- The worker's statements walk the ready index in order rather than sort: set for the
-- session of lmq's own connections (libpq `options`), or, behind PgBouncer, at the start
-- of each of their transactions with these two statements.  Without fresh statistics (right after a bulk enqueue, or on a server
-- without autovacuum) the planner takes the pending rows for a handful and sorts all of
-- them; with this the claim's cost does not grow with the backlog whatever it believes.
-- (A sort it cannot avoid then costs "disabled", which would make the plan look
-- expensive enough for JIT compilation: a second spent compiling a 1 ms query.  So no JIT.)
SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true)

-- name: plan_by_index_async_commit
-- the same for claims and acknowledgements, which (only those) also commit without
-- waiting for the WAL flush: a server crash may forget the last fraction of a second of
-- them, which only makes those tasks run again (at-least-once holds: nothing enqueued is
-- lost); ?async_ack=false waits
SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true),
       set_config('synchronous_commit', 'off', true)

-- name: claim
-- One statement: the best `limit` ready tasks, where ready means pending and due, or
-- processing with a lease that ran out (the worker died or hung: rescued here, its lapse
-- recorded as a LeaseExpired error, ordered as if it were due now).  Both walks lock
-- with SKIP LOCKED, so concurrent claims never wait for each other nor share a task;
-- rows locked and not taken are free again at commit.  The ready walk is the kind of
-- claim's (plain: plain_ready, or only the plain rows' walk while no row has a breaker;
-- probe: ready_probe; rate: ready_rate), and so is the rule for an expired lease
-- (plain_gate, probe_gate, rate_gate; x is the task row).  After the claimed rows comes
-- one more, all NULL but its last column: whether any pending row has a breaker (the
-- breaker index's first entry, in its order whatever the statistics), which tells the next plain claim whether it must walk
-- them (planning that walk costs about a third of a millisecond, each claim).
WITH candidates AS (
    SELECT id, priority, next_run AS due, false AS lapsed
      FROM ({ready}) ready
    UNION ALL
    SELECT id, priority, {prefix}queue_now(), true
      FROM (SELECT id, priority FROM {prefix}queue_tasks x
             WHERE status = 'processing' AND locked_until <= {prefix}queue_now()
                   {gate} {queue_filter}
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED) expired
), c AS (
    SELECT id, lapsed FROM candidates ORDER BY priority DESC, due, id LIMIT %(limit)s
), claimed AS (
UPDATE {prefix}queue_tasks t
   SET status = 'processing',
       attempts = t.attempts + 1,
       locked_by = %(worker)s,
       locked_until = {prefix}queue_now() + %(lease)s,
       updated = {prefix}queue_now(),
       last_error = CASE WHEN c.lapsed
           THEN 'lease expired: worker ' || COALESCE(t.locked_by, '?')
                || ' stopped renewing it (died or hung)'
           ELSE t.last_error END,
       errors = CASE WHEN c.lapsed
           THEN COALESCE(t.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
               'attempt', t.attempts,
               'at', to_char(statement_timestamp() AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
               'type', 'LeaseExpired',
               'message', 'lease expired: worker ' || COALESCE(t.locked_by, '?')
                          || ' stopped renewing it (died or hung)',
               'traceback', NULL))
           ELSE t.errors END
  FROM c
 WHERE t.id = c.id AND t.id = ANY(ARRAY(SELECT id FROM c))
RETURNING t.id, t.queue, t.task_name, t.payload, t.attempts, t.max_attempts, t.breaker,
          t.rate_key, c.lapsed
)
SELECT id, queue, task_name, payload, attempts, max_attempts, breaker, rate_key, lapsed
  FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT breaker FROM {prefix}queue_tasks
         WHERE status = 'pending' AND breaker IS NOT NULL
         ORDER BY breaker LIMIT 1) IS NOT NULL

-- name: unblocked
-- not behind a breaker whose stored state is other than closed (x is the task row; one
-- primary-key probe for a row with a breaker, none for one without)
AND (x.breaker IS NULL
     OR NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers b
                     WHERE b.name = x.breaker AND b.state <> 'closed'))

-- name: plain_gate
-- what a plain claim may take: no rate key, not behind a blocked breaker
AND x.rate_key IS NULL {unblocked}

-- name: rate_gate
-- a rate claim: that key, not behind a blocked breaker
AND x.rate_key = %(rate_key)s {unblocked}

-- name: probe_gate
-- a probe claim: that breaker's tasks, whatever its state
AND x.breaker = %(breaker)s

-- name: plain_ready
-- a plain claim's walks: the plain rows' ready index (ready_queues or ready_excluding),
-- and the rows behind the breakers that are closed, name by name
SELECT * FROM ({plain}) p
UNION ALL
SELECT * FROM ({ready_breakers}) b

-- name: ready_queues
-- the claim's walk for workers on some queues: one walk of the ready index (plain rows
-- only, no rate key and no breaker: the index's predicate) for each
SELECT r.id, r.priority, r.next_run
  FROM unnest(%(queues)s::text[]) AS q(name),
       LATERAL (SELECT id, priority, next_run FROM {prefix}queue_tasks
                 WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
                   AND next_run <= {prefix}queue_now() AND queue = q.name
                 ORDER BY priority DESC, next_run, id
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED) r

-- name: pending_queues
-- the queues with pending plain tasks, one probe of the ready index each (a loose index
-- scan): a worker of every queue walks their ready rows queue by queue, and with some
-- paused (%(exclude)s, else empty) never a paused queue's backlog
WITH RECURSIVE qs(name) AS (
    (SELECT queue FROM {prefix}queue_tasks
      WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
      ORDER BY queue LIMIT 1)
  UNION ALL
    SELECT (SELECT queue FROM {prefix}queue_tasks
             WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
               AND queue > qs.name
             ORDER BY queue LIMIT 1)
      FROM qs WHERE qs.name IS NOT NULL
)
SELECT name FROM qs WHERE name IS NOT NULL AND name <> ALL(%(exclude)s::text[])

-- name: ready_excluding
-- the claim's walk for a worker of every queue: one walk of the ready index for each
-- queue with pending plain tasks that is not paused (%(exclude)s)
SELECT r.id, r.priority, r.next_run
  FROM ({pending_queues}) q,
       LATERAL (SELECT id, priority, next_run FROM {prefix}queue_tasks
                 WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
                   AND next_run <= {prefix}queue_now() AND queue = q.name
                 ORDER BY priority DESC, next_run, id
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED) r

-- name: closed_breakers
-- the breakers with pending tasks (a loose scan of the breaker index, one probe per
-- name) whose stored state is closed, or that have no row: an open breaker's backlog is
-- never walked
WITH RECURSIVE bs(name) AS (
    (SELECT breaker FROM {prefix}queue_tasks
      WHERE status = 'pending' AND breaker IS NOT NULL
      ORDER BY breaker LIMIT 1)
  UNION ALL
    SELECT (SELECT breaker FROM {prefix}queue_tasks
             WHERE status = 'pending' AND breaker IS NOT NULL AND breaker > bs.name
             ORDER BY breaker LIMIT 1)
      FROM bs WHERE bs.name IS NOT NULL
)
SELECT name FROM bs
 WHERE name IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_breakers b
                    WHERE b.name = bs.name AND b.state <> 'closed')

-- name: ready_breakers
-- a plain claim's walk of the rows behind closed breakers (without a rate key): the
-- breaker index, one walk per name
SELECT r.id, r.priority, r.next_run
  FROM ({closed_breakers}) bn,
       LATERAL (SELECT id, priority, next_run FROM {prefix}queue_tasks
                 WHERE status = 'pending' AND breaker = bn.name AND rate_key IS NULL
                   AND next_run <= {prefix}queue_now() {queue_filter}
                 ORDER BY priority DESC, next_run, id
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED) r

-- name: ready_probe
-- a probe claim's walk: that breaker's rows in the breaker index, rate key or not
SELECT id, priority, next_run FROM {prefix}queue_tasks
 WHERE status = 'pending' AND breaker = %(breaker)s AND next_run <= {prefix}queue_now()
       {queue_filter}
 ORDER BY priority DESC, next_run, id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED

-- name: ready_rate
-- a rate claim's walk: that key's rows in the rate index, not behind a blocked breaker
SELECT id, priority, next_run FROM {prefix}queue_tasks x
 WHERE status = 'pending' AND rate_key = %(rate_key)s AND next_run <= {prefix}queue_now()
       {queue_filter} {unblocked}
 ORDER BY priority DESC, next_run, id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED

-- name: has_ready
-- "is anything a plain claim may take?" for idle workers: the first ready plain row in
-- claim order (ORDER BY ... LIMIT 1 in a subquery, which EXISTS keeps, so it is the
-- ready index's first entry even when the statistics make a sequential scan look cheap:
-- they take "no rate key" and "no breaker" for independent), then the same for each
-- closed breaker, then a lapsed lease a plain claim could rescue
SELECT EXISTS (SELECT 1 FROM ({first_plain}) r)
    OR EXISTS (SELECT 1 FROM ({closed_breakers}) bn,
                      LATERAL (SELECT 1 FROM {prefix}queue_tasks
                                WHERE status = 'pending' AND breaker = bn.name
                                  AND rate_key IS NULL AND next_run <= {prefix}queue_now()
                                  {queue_filter}
                                ORDER BY breaker, priority DESC, next_run, id
                                LIMIT 1) r)
    OR EXISTS (SELECT 1 FROM {prefix}queue_tasks x
                WHERE status = 'processing' AND locked_until <= {prefix}queue_now()
                      {gate} {queue_filter})

-- name: first_queues
SELECT 1
  FROM unnest(%(queues)s::text[]) AS q(name),
       LATERAL (SELECT 1 FROM {prefix}queue_tasks
                 WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
                   AND next_run <= {prefix}queue_now() AND queue = q.name
                 ORDER BY queue, priority DESC, next_run, id
                 LIMIT 1) r

-- name: first_excluding
SELECT 1
  FROM ({pending_queues}) q,
       LATERAL (SELECT 1 FROM {prefix}queue_tasks
                 WHERE status = 'pending' AND rate_key IS NULL AND breaker IS NULL
                   AND next_run <= {prefix}queue_now() AND queue = q.name
                 ORDER BY queue, priority DESC, next_run, id
                 LIMIT 1) r

-- name: breakers_due
-- the earliest next_run among pending tasks behind closed breakers (no rate key): per
-- breaker, the loose scan over priorities of "due"
SELECT min(d.due)
  FROM ({closed_breakers}) bn,
       LATERAL (WITH RECURSIVE p(priority) AS (
                    (SELECT priority FROM {prefix}queue_tasks
                      WHERE status = 'pending' AND breaker = bn.name AND rate_key IS NULL
                            {queue_filter}
                      ORDER BY priority DESC LIMIT 1)
                  UNION ALL
                    SELECT (SELECT priority FROM {prefix}queue_tasks
                             WHERE status = 'pending' AND breaker = bn.name
                               AND rate_key IS NULL AND priority < p.priority {queue_filter}
                             ORDER BY priority DESC LIMIT 1)
                      FROM p WHERE p.priority IS NOT NULL
                )
                SELECT min((SELECT next_run FROM {prefix}queue_tasks
                             WHERE status = 'pending' AND breaker = bn.name
                               AND rate_key IS NULL AND priority = p.priority {queue_filter}
                             ORDER BY priority DESC, next_run LIMIT 1)) AS due
                  FROM p WHERE p.priority IS NOT NULL) d

-- name: due
-- the earliest next_run among the worker's pending plain tasks, a loose index scan over
-- priorities queue by queue (the worker's queues, or for a worker of every
-- queue those with pending plain tasks that are not paused, so a paused backlog is never
-- walked; one walk over several queues at once would read and sort all their ready rows,
-- 100 ms at 200,000), the same among those behind each closed breaker, the earliest
-- lease expiry a plain claim could rescue (the lease index in order; lapsed leases of
-- paused queues do not count), and the server's now
SELECT (SELECT min(d.due)
          FROM ({due_queues}) q,
               LATERAL (WITH RECURSIVE p(priority) AS (
                            (SELECT priority FROM {prefix}queue_tasks
                              WHERE status = 'pending' AND rate_key IS NULL
                                AND breaker IS NULL AND queue = q.name
                              ORDER BY priority DESC LIMIT 1)
                          UNION ALL
                            SELECT (SELECT priority FROM {prefix}queue_tasks
                                     WHERE status = 'pending' AND rate_key IS NULL
                                       AND breaker IS NULL AND queue = q.name
                                       AND priority < p.priority
                                     ORDER BY priority DESC LIMIT 1)
                              FROM p WHERE p.priority IS NOT NULL
                        )
                        SELECT min((SELECT next_run FROM {prefix}queue_tasks
                                     WHERE status = 'pending' AND rate_key IS NULL
                                       AND breaker IS NULL AND queue = q.name
                                       AND priority = p.priority
                                     ORDER BY priority DESC, next_run LIMIT 1)) AS due
                          FROM p WHERE p.priority IS NOT NULL) d),
       ({breakers_due}),
       (SELECT locked_until FROM {prefix}queue_tasks x
         WHERE status = 'processing' AND locked_until IS NOT NULL {gate} {queue_filter}
         ORDER BY locked_until LIMIT 1),
       {prefix}queue_now()

-- name: rate_keys_ready
-- the rate keys with pending tasks a rate claim may take (a loose scan of the rate index,
-- one probe per key, at most 100 keys), each with its earliest next_run (the loose scan
-- over priorities of "due") and the task_name of that task, none behind a breaker that
-- is not closed
SELECT k.name, d.next_run, d.task_name, {prefix}queue_now()
  FROM (WITH RECURSIVE ks(name) AS (
            (SELECT rate_key FROM {prefix}queue_tasks
              WHERE status = 'pending' AND rate_key IS NOT NULL
              ORDER BY rate_key LIMIT 1)
          UNION ALL
            SELECT (SELECT rate_key FROM {prefix}queue_tasks
                     WHERE status = 'pending' AND rate_key IS NOT NULL
                       AND rate_key > ks.name
                     ORDER BY rate_key LIMIT 1)
              FROM ks WHERE ks.name IS NOT NULL
        )
        SELECT name FROM ks WHERE name IS NOT NULL) k,
       LATERAL (WITH RECURSIVE p(priority) AS (
                    (SELECT priority FROM {prefix}queue_tasks x
                      WHERE status = 'pending' AND rate_key = k.name {unblocked} {queue_filter}
                      ORDER BY priority DESC LIMIT 1)
                  UNION ALL
                    SELECT (SELECT priority FROM {prefix}queue_tasks x
                             WHERE status = 'pending' AND rate_key = k.name
                               AND priority < p.priority {unblocked} {queue_filter}
                             ORDER BY priority DESC LIMIT 1)
                      FROM p WHERE p.priority IS NOT NULL
                )
                SELECT f.next_run, f.task_name
                  FROM p,
                       LATERAL (SELECT next_run, task_name FROM {prefix}queue_tasks x
                                 WHERE status = 'pending' AND rate_key = k.name
                                   AND priority = p.priority {unblocked} {queue_filter}
                                 ORDER BY priority DESC, next_run LIMIT 1) f
                 WHERE p.priority IS NOT NULL
                 ORDER BY f.next_run LIMIT 1) d
 LIMIT 100

-- name: rate_keys_lapsed
-- the rate keys with a lapsed lease a rate claim would rescue (due now)
SELECT x.rate_key, min(x.task_name), {prefix}queue_now()
  FROM {prefix}queue_tasks x
 WHERE status = 'processing' AND locked_until <= {prefix}queue_now()
   AND x.rate_key IS NOT NULL {unblocked} {queue_filter}
 GROUP BY x.rate_key

-- name: ack_done
UPDATE {prefix}queue_tasks
   SET status = 'done', locked_by = NULL, locked_until = NULL, updated = {prefix}queue_now()
 WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'

-- name: retry
UPDATE {prefix}queue_tasks t
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       next_run = {prefix}queue_now() + r.delay, updated = {prefix}queue_now(),
       last_error = r.message,
       errors = COALESCE(t.errors, '[]'::jsonb) || jsonb_build_array(r.error::jsonb)
  FROM unnest(%(ids)s::bigint[], %(delays)s::double precision[], %(messages)s::text[],
              %(errors)s::text[]) AS r(id, delay, message, error)
 WHERE t.id = r.id AND t.locked_by = %(worker)s AND t.status = 'processing'

-- name: release
UPDATE {prefix}queue_tasks
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = greatest(attempts - 1, 0), next_run = {prefix}queue_now(),
       updated = {prefix}queue_now()
 WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'

-- name: defer
-- held back by a breaker or rate limit, not run: pending again at now + delay with the
-- attempt refunded and nothing recorded; keys given are written into the row
UPDATE {prefix}queue_tasks t
   SET status = 'pending', locked_by = NULL, locked_until = NULL,
       attempts = greatest(t.attempts - 1, 0), next_run = {prefix}queue_now() + d.delay,
       updated = {prefix}queue_now(),
       breaker = COALESCE(d.breaker, t.breaker), rate_key = COALESCE(d.rate_key, t.rate_key)
  FROM unnest(%(ids)s::bigint[], %(delays)s::double precision[], %(breakers)s::text[],
              %(rate_keys)s::text[]) AS d(id, delay, breaker, rate_key)
 WHERE t.id = d.id AND t.locked_by = %(worker)s AND t.status = 'processing'

-- name: bury
-- copy each task to the dead letters with its history, then mark the task row 'dead'
-- (it stays as the record, linked to its dead letter); only rows the worker still holds
WITH b AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(messages)s::text[], %(reasons)s::text[],
                         %(fingerprints)s::text[], %(max_attempts)s::integer[],
                         %(errors)s::text[])
           AS b(id, message, reason, fingerprint, max_attempts, error)
), victims AS (
    SELECT t.id, t.queue, t.task_name, t.payload, t.priority, t.attempts,
           COALESCE(t.max_attempts, b.max_attempts) AS max_attempts, b.message, b.reason,
           b.fingerprint, t.created, t.unique_key, t.breaker, t.rate_key,
           COALESCE(t.errors, '[]'::jsonb) || jsonb_build_array(b.error::jsonb) AS errors
      FROM {prefix}queue_tasks t JOIN b ON t.id = b.id
     WHERE t.status = 'processing' AND t.locked_by = %(worker)s
       FOR UPDATE OF t
), dl AS (
    INSERT INTO {prefix}queue_dead_letters
        (task_id, queue, task_name, payload, priority, attempts, max_attempts, error, reason,
         fingerprint, created, died_at, errors, unique_key, breaker, rate_key)
    SELECT id, queue, task_name, payload, priority, attempts, max_attempts, message, reason,
           fingerprint, created, {prefix}queue_now(), errors, unique_key, breaker, rate_key
      FROM victims
    RETURNING id, task_id, error, errors
)
UPDATE {prefix}queue_tasks t
   SET status = 'dead', locked_by = NULL, locked_until = NULL,
       updated = {prefix}queue_now(), last_error = dl.error, errors = dl.errors,
       dead_letter_id = dl.id
  FROM dl
 WHERE t.id = dl.task_id

-- name: notify
SELECT pg_notify('{prefix}queue_tasks', '')

-- name: renew
UPDATE {prefix}queue_tasks
   SET locked_until = {prefix}queue_now() + %(lease)s
 WHERE id = ANY(%(ids)s) AND locked_by = %(worker)s AND status = 'processing'
RETURNING id

-- name: heartbeat
INSERT INTO {prefix}queue_workers
    (id, host, pid, version, queues, concurrency, running, done, started, last_beat)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s, %(concurrency)s, %(running)s,
        %(done)s, %(started)s, {prefix}queue_now())
ON CONFLICT (id) DO UPDATE SET
    running = EXCLUDED.running, done = EXCLUDED.done, last_beat = EXCLUDED.last_beat

-- name: remove_worker
DELETE FROM {prefix}queue_workers WHERE id = %(id)s

-- name: workers
SELECT id, host, pid, version, queues, concurrency, running, done, started, last_beat,
       {prefix}queue_now() - last_beat AS age
  FROM {prefix}queue_workers ORDER BY started, id

-- name: prune_done
-- small batches, each its own transaction; never the newest row (like SQLite, whose
-- rowid would hand its id out again: here the sequence never would, but one rule for all)
DELETE FROM {prefix}queue_tasks
 WHERE id IN (SELECT id FROM {prefix}queue_tasks
               WHERE status = 'done' AND updated < {prefix}queue_now() - %(age)s
                 AND id < (SELECT max(id) FROM {prefix}queue_tasks)
               LIMIT %(batch)s
               FOR UPDATE SKIP LOCKED)

-- name: prune_cancelled
-- cancelled tasks after the same retention as done ones (updated: when cancelled)
DELETE FROM {prefix}queue_tasks
 WHERE id IN (SELECT id FROM {prefix}queue_tasks
               WHERE status = 'cancelled' AND updated < {prefix}queue_now() - %(age)s
                 AND id < (SELECT max(id) FROM {prefix}queue_tasks)
               LIMIT %(batch)s
               FOR UPDATE SKIP LOCKED)

-- name: prune_dead
-- dead letters re-queued, discarded or rejected longer ago than the retention, with the
-- task rows that are still their record (a re-queued letter's task row is live: kept)
WITH victims AS (
    SELECT id, task_id FROM {prefix}queue_dead_letters
     WHERE (status = 'requeued' AND requeued_at < {prefix}queue_now() - %(age)s)
        OR (status = 'discarded' AND discarded_at < {prefix}queue_now() - %(age)s)
        OR (review = 'rejected' AND status = 'dead'
            AND reviewed_at < {prefix}queue_now() - %(age)s)
     LIMIT %(batch)s
     FOR UPDATE SKIP LOCKED
), records AS (
    DELETE FROM {prefix}queue_tasks t USING victims v
     WHERE t.id = v.task_id AND t.status IN ('dead', 'discarded') AND t.dead_letter_id = v.id
)
DELETE FROM {prefix}queue_dead_letters WHERE id IN (SELECT id FROM victims)

-- name: prune_batches
-- completed batches older than the retention whose members are all gone
DELETE FROM {prefix}queue_batches
 WHERE name IN (SELECT b.name FROM {prefix}queue_batches b
                 WHERE b.completed < {prefix}queue_now() - %(age)s
                   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t WHERE t.batch = b.name)
                 LIMIT %(batch)s
                 FOR UPDATE SKIP LOCKED)

-- name: prune_workers
DELETE FROM {prefix}queue_workers WHERE last_beat < {prefix}queue_now() - %(age)s

-- name: dead_rows
-- on a server running without autovacuum, nothing would ever clean out the dead row
-- versions every claim and acknowledgement leaves (and the ready index's dead entries,
-- which each claim walks past): the pruner vacuums the task table itself when this says so
SELECT n_dead_tup
  FROM pg_stat_user_tables
 WHERE relid = to_regclass('{prefix}queue_tasks')
   AND (current_setting('autovacuum') = 'off'
        OR EXISTS (SELECT 1 FROM pg_class c, unnest(c.reloptions) o
                    WHERE c.oid = relid AND o = 'autovacuum_enabled=false'))

-- name: vacuum
VACUUM (SKIP_LOCKED) {prefix}queue_tasks

-- name: get_task
-- explicit columns everywhere: a prepared "SELECT *" would fail on its connection once a
-- later migration adds a column ("cached plan must not change result type")
SELECT id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
       created, updated, locked_by, locked_until, last_error, unique_key, errors,
       dead_letter_id, batch, breaker, rate_key
  FROM {prefix}queue_tasks WHERE id = %(id)s

-- name: get_dead_by_task
SELECT id, task_id, queue, task_name, payload, priority, attempts, max_attempts, error,
       reason, fingerprint, created, died_at, errors, unique_key, status, requeued_at,
       discarded_at, review, reviewed_by, reviewed_at, review_note, requeue_at, breaker,
       rate_key
  FROM {prefix}queue_dead_letters WHERE task_id = %(id)s ORDER BY id DESC LIMIT 1

-- name: get_dead
SELECT id, task_id, queue, task_name, payload, priority, attempts, max_attempts, error,
       reason, fingerprint, created, died_at, errors, unique_key, status, requeued_at,
       discarded_at, review, reviewed_by, reviewed_at, review_note, requeue_at, breaker,
       rate_key
  FROM {prefix}queue_dead_letters WHERE id = %(id)s

-- name: count_tasks
SELECT queue, status, count(*) AS n,
       count(*) FILTER (WHERE status = 'pending' AND next_run <= {prefix}queue_now()) AS ready,
       min(next_run) FILTER (WHERE status = 'pending' AND next_run <= {prefix}queue_now())
           AS oldest,
       {prefix}queue_now() AS now
  FROM {prefix}queue_tasks
 WHERE status IN ('pending', 'processing', 'done', 'cancelled')
 GROUP BY queue, status

-- name: count_dead
SELECT queue, count(*) AS n FROM {prefix}queue_dead_letters
 WHERE status = 'dead' GROUP BY queue

-- name: list_tasks
-- {where} is built from the filter (dead-lettered rows are listed through the dead letters)
SELECT id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
       created, updated, locked_by, locked_until, last_error, unique_key, errors,
       dead_letter_id, batch, breaker, rate_key
  FROM {prefix}queue_tasks WHERE {where} ORDER BY id DESC LIMIT %(limit)s

-- name: list_dead
SELECT id, task_id, queue, task_name, payload, priority, attempts, max_attempts, error,
       reason, fingerprint, created, died_at, errors, unique_key, status, requeued_at,
       discarded_at, review, reviewed_by, reviewed_at, review_note, requeue_at, breaker,
       rate_key
  FROM {prefix}queue_dead_letters WHERE {where}
 ORDER BY died_at DESC, id DESC LIMIT %(limit)s


-- name: dead_groups
-- status-'dead' letters by fingerprint ({where} narrows them), largest group first, then
-- the newest; the example is the group's newest member
SELECT g.fingerprint, g.n, g.first_seen, g.last_seen, d.id, d.task_name, d.error
  FROM (SELECT COALESCE(fingerprint, '') AS fingerprint, count(*) AS n,
               min(died_at) AS first_seen, max(died_at) AS last_seen, max(id) AS example_id
          FROM {prefix}queue_dead_letters
         WHERE status = 'dead' {where}
         GROUP BY COALESCE(fingerprint, '')
         ORDER BY count(*) DESC, max(died_at) DESC, COALESCE(fingerprint, '')
         LIMIT %(limit)s) g
  JOIN {prefix}queue_dead_letters d ON d.id = g.example_id
 ORDER BY g.n DESC, g.last_seen DESC, g.fingerprint

-- name: lock_dead
-- the status-'dead' letters a selector names or matches ({where}), oldest death first,
-- locked for the transaction
SELECT id, task_id, unique_key
  FROM {prefix}queue_dead_letters
 WHERE status = 'dead' {where}
 ORDER BY died_at, id
   FOR UPDATE

-- name: lock_approved
-- approved letters whose time has come, oldest requeue_at first (the partial index);
-- SKIP LOCKED: concurrent workers share them out and never re-queue one twice
SELECT id, task_id, unique_key
  FROM {prefix}queue_dead_letters
 WHERE review = 'approved' AND status = 'dead' AND requeue_at <= {prefix}queue_now()
 ORDER BY requeue_at, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED

-- name: approved_due
-- the cheap check a worker makes about once a second (one entry of the partial index)
SELECT EXISTS (SELECT 1 FROM {prefix}queue_dead_letters
                WHERE review = 'approved' AND status = 'dead'
                  AND requeue_at <= {prefix}queue_now())

-- name: mark_requeued
UPDATE {prefix}queue_dead_letters SET status = 'requeued', requeued_at = {prefix}queue_now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'dead'

-- name: revive
-- the letters' task rows back to pending, due %(dues)s seconds from now each, attempts
-- reset, the error history, batch, breaker and rate key kept, linked to their letter
-- (the keys from the letter where the row lost them); unique keys as
-- given (NULL when a live task holds the key meanwhile)
UPDATE {prefix}queue_tasks t
   SET status = 'pending', attempts = 0, next_run = {prefix}queue_now() + r.due,
       updated = {prefix}queue_now(), locked_by = NULL, locked_until = NULL,
       unique_key = r.unique_key, dead_letter_id = r.dead_id,
       payload = COALESCE(%(payload)s::text, t.payload),
       breaker = COALESCE(t.breaker, d.breaker), rate_key = COALESCE(t.rate_key, d.rate_key)
  FROM unnest(%(task_ids)s::bigint[], %(dead_ids)s::bigint[], %(dues)s::double precision[],
              %(keys)s::text[]) AS r(task_id, dead_id, due, unique_key)
  JOIN {prefix}queue_dead_letters d ON d.id = r.dead_id
 WHERE t.id = r.task_id AND t.status IN ('dead', 'discarded')
RETURNING t.id

-- name: reinsert
-- letters whose task row is gone (deleted by hand): the row again, from the letter
INSERT INTO {prefix}queue_tasks
    (id, queue, task_name, payload, priority, status, attempts, max_attempts, next_run,
     created, updated, errors, unique_key, dead_letter_id, breaker, rate_key)
SELECT d.task_id, d.queue, d.task_name, COALESCE(%(payload)s::text, d.payload), d.priority,
       'pending', 0, d.max_attempts, {prefix}queue_now() + r.due, d.created,
       {prefix}queue_now(), d.errors, r.unique_key, d.id, d.breaker, d.rate_key
  FROM unnest(%(dead_ids)s::bigint[], %(dues)s::double precision[], %(keys)s::text[])
       AS r(dead_id, due, unique_key)
  JOIN {prefix}queue_dead_letters d ON d.id = r.dead_id

-- name: key_taken
SELECT EXISTS (SELECT 1 FROM {prefix}queue_tasks
                WHERE unique_key = %(key)s AND status IN ('pending', 'processing'))

-- name: review_dead
-- the i-th letter (oldest death first) of an approval is re-queued at base + i * %(step)s
UPDATE {prefix}queue_dead_letters d
   SET review = %(review)s, reviewed_by = %(by)s, reviewed_at = {prefix}queue_now(),
       review_note = %(note)s,
       requeue_at = CASE WHEN %(approve)s::boolean
           THEN COALESCE(%(after)s::double precision, {prefix}queue_now())
                + (r.ord - 1) * %(step)s::double precision
           END
  FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS r(id, ord)
 WHERE d.id = r.id AND d.status = 'dead'

-- name: mark_discarded
UPDATE {prefix}queue_dead_letters
   SET status = 'discarded', discarded_at = {prefix}queue_now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'dead'

-- name: discard_task
UPDATE {prefix}queue_tasks SET status = 'discarded', updated = {prefix}queue_now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'dead'

-- name: lock_tasks
SELECT id, status FROM {prefix}queue_tasks WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
   FOR UPDATE

-- name: cancel_ids
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', locked_by = NULL, locked_until = NULL,
       updated = {prefix}queue_now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending'
RETURNING id

-- name: cancel_matching
-- every pending task of a task name / queue / batch ({where})
UPDATE {prefix}queue_tasks
   SET status = 'cancelled', locked_by = NULL, locked_until = NULL,
       updated = {prefix}queue_now()
 WHERE status = 'pending' {where}
RETURNING id

-- name: pause_queue
-- pausing a paused queue keeps when it was first paused
INSERT INTO {prefix}queue_queues AS q (name, paused, paused_at)
VALUES (%(name)s, true, {prefix}queue_now())
ON CONFLICT (name) DO UPDATE
   SET paused = true,
       paused_at = CASE WHEN q.paused THEN q.paused_at ELSE EXCLUDED.paused_at END

-- name: resume_queue
UPDATE {prefix}queue_queues SET paused = false, paused_at = NULL WHERE name = %(name)s

-- name: paused_queues
SELECT name, paused_at FROM {prefix}queue_queues WHERE paused ORDER BY name

-- name: get_batch
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches WHERE name = %(name)s

-- name: list_batches
SELECT name, total, created, completed, on_complete_task, followup_id
  FROM {prefix}queue_batches ORDER BY created DESC, name DESC LIMIT %(limit)s

-- name: batch_members
-- member counts by status (the batch index), and the newest finish of a done or dead one
SELECT batch, status, count(*),
       max(updated) FILTER (WHERE status IN ('done', 'dead'))
  FROM {prefix}queue_tasks
 WHERE batch = ANY(%(names)s::text[])
 GROUP BY batch, status

-- name: open_batches
-- batches not yet complete with no member pending or processing: with none open, one
-- probe of the (empty) partial index
SELECT b.name FROM {prefix}queue_batches b
 WHERE b.completed IS NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t
                    WHERE t.batch = b.name AND t.status IN ('pending', 'processing'))
 ORDER BY b.created, b.name

-- name: settle_batch
-- the compare-and-set: of two workers settling at once only one sees the row change
-- (the other waits for its lock, then finds completed set)
UPDATE {prefix}queue_batches b
   SET completed = {prefix}queue_now()
 WHERE b.name = %(name)s AND b.completed IS NULL
   AND NOT EXISTS (SELECT 1 FROM {prefix}queue_tasks t
                    WHERE t.batch = b.name AND t.status IN ('pending', 'processing'))
RETURNING b.on_complete_task, b.on_complete_payload, b.on_complete_queue

-- name: insert_followup
INSERT INTO {prefix}queue_tasks (task_name, payload, queue, next_run, updated)
VALUES (%(task_name)s, %(payload)s, %(queue)s, {prefix}queue_now(), {prefix}queue_now())
RETURNING id

-- name: set_followup
UPDATE {prefix}queue_batches SET followup_id = %(id)s WHERE name = %(name)s

-- name: breakers
-- Circuit breakers, rate limits and schedules are rows swapped by compare-and-set: a put
-- with expected version 0 inserts (ON CONFLICT DO NOTHING: a row already there is a lost
-- race); any other is one UPDATE that matches only the expected version, which a
-- concurrent one waits for and then finds changed.  Either way one statement, and the
-- row count says whether it took.
SELECT name, state, failures, window_start, window_calls, window_failures, cooldown,
       opened_at, retry_at, probe_by, probe_until, trips, forced, last_error, updated, version
  FROM {prefix}queue_breakers {where} ORDER BY name

-- name: insert_breaker
INSERT INTO {prefix}queue_breakers
    (name, state, failures, window_start, window_calls, window_failures, cooldown,
     opened_at, retry_at, probe_by, probe_until, trips, forced, last_error, updated, version)
VALUES (%(name)s, %(state)s, %(failures)s, %(window_start)s, %(window_calls)s,
        %(window_failures)s, %(cooldown)s, %(opened_at)s, %(retry_at)s, %(probe_by)s,
        %(probe_until)s, %(trips)s, %(forced)s, %(last_error)s, %(updated)s, %(version)s)
ON CONFLICT (name) DO NOTHING

-- name: update_breaker
-- returns the state it replaced (as this statement's snapshot saw it): closing a breaker
-- that was not closed wakes idle workers (its tasks are claimable again)
UPDATE {prefix}queue_breakers b
   SET state = %(state)s, failures = %(failures)s, window_start = %(window_start)s,
       window_calls = %(window_calls)s, window_failures = %(window_failures)s,
       cooldown = %(cooldown)s, opened_at = %(opened_at)s, retry_at = %(retry_at)s,
       probe_by = %(probe_by)s, probe_until = %(probe_until)s, trips = %(trips)s,
       forced = %(forced)s, last_error = %(last_error)s, updated = %(updated)s,
       version = %(version)s
  FROM (SELECT state FROM {prefix}queue_breakers WHERE name = %(name)s) old
 WHERE b.name = %(name)s AND b.version = %(expected)s
RETURNING old.state

-- name: delete_breaker
DELETE FROM {prefix}queue_breakers WHERE name = %(name)s RETURNING state

-- name: rate_limits
SELECT name, calls, per, burst, tat, updated, version
  FROM {prefix}queue_rate_limits {where} ORDER BY name

-- name: insert_rate_limit
INSERT INTO {prefix}queue_rate_limits (name, calls, per, burst, tat, updated, version)
VALUES (%(name)s, %(calls)s, %(per)s, %(burst)s, %(tat)s, %(updated)s, %(version)s)
ON CONFLICT (name) DO NOTHING

-- name: update_rate_limit
UPDATE {prefix}queue_rate_limits
   SET calls = %(calls)s, per = %(per)s, burst = %(burst)s, tat = %(tat)s,
       updated = %(updated)s, version = %(version)s
 WHERE name = %(name)s AND version = %(expected)s

-- name: schedules
SELECT name, task_name, queue, payload, priority, cron, every, timezone, missed, next_tick,
       last_tick, last_task_id, paused, declared, updated, version
  FROM {prefix}queue_schedules ORDER BY name

-- name: insert_schedule
INSERT INTO {prefix}queue_schedules
    (name, task_name, queue, payload, priority, cron, every, timezone, missed, next_tick,
     last_tick, last_task_id, paused, declared, updated, version)
VALUES (%(name)s, %(task_name)s, %(queue)s, %(payload)s, %(priority)s, %(cron)s, %(every)s,
        %(timezone)s, %(missed)s, %(next_tick)s, %(last_tick)s, %(last_task_id)s,
        %(paused)s, %(declared)s, %(updated)s, %(version)s)
ON CONFLICT (name) DO NOTHING

-- name: update_schedule
UPDATE {prefix}queue_schedules
   SET task_name = %(task_name)s, queue = %(queue)s, payload = %(payload)s,
       priority = %(priority)s, cron = %(cron)s, every = %(every)s,
       timezone = %(timezone)s, missed = %(missed)s, next_tick = %(next_tick)s,
       last_tick = %(last_tick)s, last_task_id = %(last_task_id)s, paused = %(paused)s,
       declared = %(declared)s, updated = %(updated)s, version = %(version)s
 WHERE name = %(name)s AND version = %(expected)s

-- name: set_last_task
-- fire_schedule: the id of the last task the tick enqueued (same transaction)
UPDATE {prefix}queue_schedules SET last_task_id = %(id)s WHERE name = %(name)s

-- name: delete_schedule
DELETE FROM {prefix}queue_schedules WHERE name = %(name)s
