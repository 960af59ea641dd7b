-- Every state change of the Redis backend, one Lua script each (atomic on the server).
-- Blocks start with "-- name: NAME"; the "common" block is prepended to every other one.
-- ARGV[1] is always the key prefix P: every key and channel the scripts touch starts
-- with it (see backend.py for the layout).  Time is the server's (redis.call('TIME')).
--
-- Tasks are stored by column, like the SQL table: one hash per column
-- (P queue:tasks:<column>, field = task id), so a batch of n tasks is read or written
-- with one HMGET / HSET per column instead of one command per task.  Columns that the
-- hot path reads together are packed:
--   head  = queue NUL priority NUL task_name NUL max_attempts ('' = none) NUL unique
--           flag ('1'/'0'), written at enqueue (and by a requeue);
--   lease = worker NUL head, present exactly while the task is 'processing', so one
--           HMGET of the lease column checks a whole batch of acknowledgements;
-- the lease expiry lives only in the processing zset (its score).  The status column
-- holds pending (or nothing: pending), done, dead or discarded; a task with a lease is
-- 'processing' whatever the column says (a claim writes no status).  An absent
-- attempts is 0.
-- The hot scripts (enqueue, claim, complete) take their request as one JSON argument and
-- answer with one JSON string: cjson (C) on both ends instead of thousands of RESP items.

-- name: common
local P = ARGV[1]
local K_IDS = P .. 'queue:ids'
local K_ACTIVE = P .. 'queue:active'
local K_QUEUES = P .. 'queue:queues'
local K_PROC = P .. 'queue:processing'
local K_DONE = P .. 'queue:done'
local K_UNIQUE = P .. 'queue:unique'
local K_NPROC = P .. 'queue:n:processing'
local K_NDONE = P .. 'queue:n:done'
local K_NDEAD = P .. 'queue:n:dead'
local K_DEAD_IDS = P .. 'queue:dead_ids'
local K_DEAD_ALL = P .. 'queue:dead_all'
local K_DEAD_LIVE = P .. 'queue:dead_live'
local K_WORKERS = P .. 'queue:workers'
local K_BEATS = P .. 'queue:beats'
local K_META = P .. 'queue:meta'
local CHANNEL = P .. 'queue:wake'
local NULL = cjson.null
local COLUMNS = {'head', 'payload', 'status', 'attempts', 'next_run', 'created', 'updated',
  'lease', 'last_error', 'unique_key', 'errors', 'dead_letter_id'}

local function col(name) return P .. 'queue:tasks:' .. name end
local function dkey(id) return P .. 'queue:dead:' .. id end
local function prio_key(q) return P .. 'queue:prio:' .. q end
local function pend_key(q, prio) return P .. 'queue:pending:' .. q .. ':' .. prio end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
-- pending members are zero-padded ids: equal scores (next_run) then sort by id
local function pad(id) return string.rep('0', 16 - #id) .. id end
local function unpad(m) return string.match(m, '^0*(%d+)$') end

local function make_head(q, prio, name, maxa, has_ukey)
  return q .. '\0' .. prio .. '\0' .. name .. '\0' .. maxa .. '\0' .. (has_ukey and '1' or '0')
end
-- head -> queue, priority, task_name, max_attempts ('' = none), has a unique key?
local function split_head(h)
  local q, prio, name, maxa, flag = string.match(h, '^(.-)%z(.-)%z(.*)%z(.-)%z(.)$')
  return q, prio, name, maxa, flag == '1'
end
-- head -> queue, priority (the fields the state changes need)
local function head_qp(h)
  local a = string.find(h, '\0', 1, true)
  local b = string.find(h, '\0', a + 1, true)
  return string.sub(h, 1, a - 1), string.sub(h, a + 1, b - 1)
end
local function head_queue(h) return string.sub(h, 1, string.find(h, '\0', 1, true) - 1) end

local function append_error(old, err)
  if not old or old == '' or old == '[]' then return '[' .. err .. ']' end
  return string.sub(old, 1, -2) .. ',' .. err .. ']'
end

-- a command with many arguments after `key`, in chunks (Lua's unpack has a stack limit)
local function bulk(cmd, key, args)
  local n = #args
  local i = 1
  while i <= n do
    local j = math.min(i + 3999, n)
    redis.call(cmd, key, unpack(args, i, j))
    i = j + 1
  end
end

-- HMGET of many fields, in chunks; the answer lines up with `fields`
local function hmget_many(key, fields)
  local n = #fields
  if n <= 4000 then return redis.call('HMGET', key, unpack(fields)) end
  local out = {}
  local i = 1
  while i <= n do
    local j = math.min(i + 3999, n)
    local r = redis.call('HMGET', key, unpack(fields, i, j))
    for x = 1, #r do out[i + x - 1] = r[x] end
    i = j + 1
  end
  return out
end

-- read columns for a list of ids: get(ids, 'status', 'lease') -> {status = {...}, ...}
local function get(ids, ...)
  local out = {}
  for _, c in ipairs({...}) do
    if #ids == 0 then out[c] = {} else out[c] = hmget_many(col(c), ids) end
  end
  return out
end

-- buffered column writes: set(id, column, value) ... flush() (one HSET per column)
local W = {}
local function set(id, c, value)
  local t = W[c]
  if not t then
    t = {}
    W[c] = t
  end
  t[#t + 1] = id
  t[#t + 1] = value
end
local function flush()
  for c, t in pairs(W) do bulk('HSET', col(c), t) end
  W = {}
end

local function add_count(tbl, q, n) tbl[q] = (tbl[q] or 0) + n end
local function flush_counts(key, tbl)
  for q, n in pairs(tbl) do
    if n ~= 0 then redis.call('HINCRBY', key, q, n) end
  end
end

-- pending-set additions, buffered per (queue, priority) zset
local PEND = {}
local function make_pending(id, q, prio, nr)
  local k = pend_key(q, prio)
  local z = PEND[k]
  if not z then
    z = {}
    PEND[k] = z
    redis.call('ZADD', prio_key(q), prio, prio)
    redis.call('SADD', K_ACTIVE, q)
  end
  z[#z + 1] = nr
  z[#z + 1] = pad(id)
end
local function flush_pending()
  for k, z in pairs(PEND) do bulk('ZADD', k, z) end
  PEND = {}
end

local function release_unique(ukey, id)
  if ukey and ukey ~= '' and redis.call('HGET', K_UNIQUE, ukey) == id then
    redis.call('HDEL', K_UNIQUE, ukey)
  end
end

-- a pending zset that ran empty leaves its queue's priority index (and the queue the
-- active set), so claims never look at empty levels
local function tidy(q, prio)
  if redis.call('EXISTS', pend_key(q, prio)) == 0 then
    redis.call('ZREM', prio_key(q), prio)
    if redis.call('EXISTS', prio_key(q)) == 0 then redis.call('SREM', K_ACTIVE, q) end
  end
end

-- the ids of `sel` still leased to `worker` and their heads (aligned lists), plus the
-- columns asked for
local function held_by(worker, sel, ...)
  local held, heads = {}, {}
  if #sel == 0 then return held, heads, get(held, ...) end
  local leases = hmget_many(col('lease'), sel)
  local wp = worker .. '\0'
  local n = #wp
  local k = 0
  for j, id in ipairs(sel) do
    local v = leases[j]
    if v and string.sub(v, 1, n) == wp then
      k = k + 1
      held[k] = id
      heads[k] = string.sub(v, n + 1)
    end
  end
  return held, heads, get(held, ...)
end

-- the lease column loses the ids (they leave 'processing'), and the processing zset too
local function unlease(ids)
  if #ids > 0 then
    bulk('HDEL', col('lease'), ids)
    bulk('ZREM', K_PROC, ids)
  end
end

-- expired leases go back to pending (next_run = now) with the lapse recorded
local function rescue(now, nowf)
  local expired = redis.call('ZRANGEBYSCORE', K_PROC, '-inf', nowf, 'LIMIT', 0, 1000)
  if #expired == 0 then return 0 end
  local r = get(expired, 'lease', 'attempts', 'errors')
  local n = 0
  local nproc = {}
  for j, id in ipairs(expired) do
    local v = r.lease[j]
    if v then
      local worker = string.sub(v, 1, string.find(v, '\0', 1, true) - 1)
      local q, prio = head_qp(string.sub(v, #worker + 2))
      local msg = 'lease expired: worker ' .. worker .. ' stopped renewing it (died or hung)'
      local err = '{"attempt":' .. (r.attempts[j] or '0') .. ',"at":' .. nowf ..
        ',"type":"LeaseExpired","message":' .. cjson.encode(msg) .. ',"traceback":null}'
      set(id, 'status', 'pending')
      set(id, 'next_run', nowf)
      set(id, 'updated', nowf)
      set(id, 'last_error', msg)
      set(id, 'errors', append_error(r.errors[j], err))
      make_pending(id, q, prio, nowf)
      add_count(nproc, q, -1)
      n = n + 1
    end
  end
  unlease(expired)
  flush()
  flush_pending()
  flush_counts(K_NPROC, nproc)
  return n
end

-- claim up to `limit` ready tasks of `queues` (nil: every queue with pending work) in
-- priority DESC, next_run, id order; returns {rescued, {{id, head, payload, attempts},
-- ...}}
local function claim(worker, limit, lease, queues, now, nowf)
  local rescued = rescue(now, nowf)
  if limit <= 0 then return {rescued, {}} end
  local qs = queues
  if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
  local levels, prios = {}, {}
  for _, q in ipairs(qs) do
    for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
      local lv = levels[p]
      if not lv then
        lv = {}
        levels[p] = lv
        prios[#prios + 1] = p
      end
      lv[#lv + 1] = q
    end
  end
  table.sort(prios, function(a, b) return tonumber(a) > tonumber(b) end)
  local need = limit
  local taken = {}
  local nt = 0
  for _, p in ipairs(prios) do
    if need <= 0 then break end
    local qlist = levels[p]
    if #qlist == 1 then
      local key = pend_key(qlist[1], p)
      local ms = redis.call('ZRANGEBYSCORE', key, '-inf', nowf, 'LIMIT', 0, need)
      if #ms > 0 then
        redis.call('ZREMRANGEBYRANK', key, 0, #ms - 1)
        for _, m in ipairs(ms) do
          nt = nt + 1
          taken[nt] = unpad(m)
        end
        need = need - #ms
        tidy(qlist[1], p)
      end
    else
      -- one priority level over several queues: merge their heads by (next_run, id)
      local cands = {}
      for qi, q in ipairs(qlist) do
        local r = redis.call('ZRANGEBYSCORE', pend_key(q, p), '-inf', nowf, 'WITHSCORES',
          'LIMIT', 0, need)
        for j = 1, #r, 2 do cands[#cands + 1] = {tonumber(r[j + 1]), r[j], qi} end
      end
      table.sort(cands, function(a, b)
        if a[1] ~= b[1] then return a[1] < b[1] end
        return a[2] < b[2]
      end)
      local per = {}
      for j = 1, math.min(need, #cands) do
        local c = cands[j]
        per[c[3]] = (per[c[3]] or 0) + 1
        nt = nt + 1
        taken[nt] = unpad(c[2])
        need = need - 1
      end
      for qi, cnt in pairs(per) do
        redis.call('ZREMRANGEBYRANK', pend_key(qlist[qi], p), 0, cnt - 1)
        tidy(qlist[qi], p)
      end
    end
  end
  if nt == 0 then return {rescued, {}} end
  local untilf = fmt(now + lease)
  local heads = hmget_many(col('head'), taken)
  local payloads = hmget_many(col('payload'), taken)
  local attempts = hmget_many(col('attempts'), taken)
  local rows = {}
  local nproc = {}
  local a_att, a_lease, a_upd, zargs = {}, {}, {}, {}
  local wp = worker .. '\0'
  local k, nr = 0, 0
  for j, id in ipairs(taken) do
    local h = heads[j]
    if h then
      local att = tonumber(attempts[j] or '0') + 1
      a_att[k + 1] = id
      a_att[k + 2] = att
      a_lease[k + 1] = id
      a_lease[k + 2] = wp .. h
      a_upd[k + 1] = id
      a_upd[k + 2] = nowf
      zargs[k + 1] = untilf
      zargs[k + 2] = id
      k = k + 2
      add_count(nproc, head_queue(h), 1)
      nr = nr + 1
      rows[nr] = {id, h, payloads[j] or '{}', att}
    end
  end
  if k > 0 then
    bulk('HSET', col('attempts'), a_att)
    bulk('HSET', col('lease'), a_lease)
    bulk('HSET', col('updated'), a_upd)
    bulk('ZADD', K_PROC, zargs)
  end
  flush_counts(K_NPROC, nproc)
  return {rescued, rows}
end

-- parse "nq, q1..qn" at ARGV[i]; returns queues (nil when nq = 0) and the next index
local function read_queues(i)
  local nq = tonumber(ARGV[i])
  if nq == 0 then return nil, i + 1 end
  local qs = {}
  for j = 1, nq do qs[j] = ARGV[i + j] end
  return qs, i + nq + 1
end

-- dead-letter selection: ARGV[2] 'ids' then ids, or 'filter' then task_name and queue
-- ('-' for none, else '+' .. value).  Returns the dead-letter ids, or nil and the id
-- that is not a live dead letter.
local function select_dead()
  local sel = {}
  if ARGV[2] == 'ids' then
    for j = 3, #ARGV do
      if redis.call('HGET', dkey(ARGV[j]), 'status') ~= 'dead' then return nil, ARGV[j] end
      sel[#sel + 1] = ARGV[j]
    end
    return sel
  end
  local name = ARGV[3] ~= '-' and string.sub(ARGV[3], 2) or false
  local queue = ARGV[4] ~= '-' and string.sub(ARGV[4], 2) or false
  for _, dlid in ipairs(redis.call('ZRANGE', K_DEAD_LIVE, 0, -1)) do
    local r = redis.call('HMGET', dkey(dlid), 'task_name', 'queue')
    if (not name or r[1] == name) and (not queue or r[2] == queue) then sel[#sel + 1] = dlid end
  end
  return sel
end

-- name: enqueue
-- ARGV: P, created, JSON list of models.NewTask tuples: [name, payload, queue, priority,
-- max_attempts|null, run_at|null (epoch), delay, unique_key|null] -> "id,id,..."
local now = server_now()
local nowf = fmt(now)
local created = ARGV[2]
local tasks = cjson.decode(ARGV[3])
local n = #tasks
local last = redis.call('INCRBY', K_IDS, n)
local base = last - n
local out = {}
local c_head, c_pay, c_nr, c_cr, c_upd = {}, {}, {}, {}, {}
local ready = false
local queues = {}
local m = 0
for i = 1, n do
  local t = tasks[i]
  local q, ukey = t[3], t[8]
  local existing = false
  if ukey ~= NULL then existing = redis.call('HGET', K_UNIQUE, ukey) else ukey = false end
  if existing then
    out[i] = existing
  else
    local id = string.format('%d', base + i)
    local prio = string.format('%d', t[4])
    local nr = now
    if t[6] ~= NULL then nr = t[6] end
    nr = nr + t[7]
    local nrs = fmt(nr)
    if nr <= now then ready = true end
    local maxa = ''
    if t[5] ~= NULL then maxa = string.format('%d', t[5]) end
    c_head[m + 1] = id
    c_head[m + 2] = make_head(q, prio, t[1], maxa, ukey)
    c_pay[m + 1] = id
    c_pay[m + 2] = t[2]
    c_nr[m + 1] = id
    c_nr[m + 2] = nrs
    c_cr[m + 1] = id
    c_cr[m + 2] = created
    c_upd[m + 1] = id
    c_upd[m + 2] = nowf
    m = m + 2
    if ukey then
      set(id, 'unique_key', ukey)
      redis.call('HSET', K_UNIQUE, ukey, id)
    end
    if not queues[q] then
      queues[q] = true
      redis.call('SADD', K_QUEUES, q)
    end
    make_pending(id, q, prio, nrs)
    out[i] = id
  end
end
if m > 0 then
  bulk('HSET', col('head'), c_head)
  bulk('HSET', col('payload'), c_pay)
  bulk('HSET', col('next_run'), c_nr)
  bulk('HSET', col('created'), c_cr)
  bulk('HSET', col('updated'), c_upd)
end
flush()
flush_pending()
if ready then redis.call('PUBLISH', CHANNEL, '1') end
return table.concat(out, ',')

-- name: claim
-- ARGV: P, JSON [worker, limit, lease, queues|null] -> JSON {rescued, rows} (see claim())
local now = server_now()
local req = cjson.decode(ARGV[2])
local queues = req[4]
if queues == NULL or #queues == 0 then queues = nil end
return cjson.encode(claim(req[1], req[2], req[3], queues, now, fmt(now)))

-- name: complete
-- ARGV: P, JSON [worker, done ids, retries [[id, delay, message, error json]],
-- burials [[id, reason, message, fingerprint, max_attempts, error json]], released ids,
-- claim [limit, lease, queues|null] or null] -> JSON claim result, or "null"
local now = server_now()
local nowf = fmt(now)
local req = cjson.decode(ARGV[2])
local worker = req[1]
local wake = false
local nproc, ndone, ndead = {}, {}, {}
local rem = {}

local done, dh = held_by(worker, req[2])
local nd = #done
if nd > 0 then
  local c_st, c_upd = {}, {}
  local k = 0
  for j = 1, nd do
    local id = done[j]
    c_st[k + 1] = id
    c_st[k + 2] = 'done'
    c_upd[k + 1] = id
    c_upd[k + 2] = nowf
    k = k + 2
    local h = dh[j]
    if string.sub(h, -1) == '1' then
      release_unique(redis.call('HGET', col('unique_key'), id), id)
    end
    local q = head_queue(h)
    nproc[q] = (nproc[q] or 0) - 1
    ndone[q] = (ndone[q] or 0) + 1
  end
  bulk('HSET', col('status'), c_st)
  bulk('HSET', col('updated'), c_upd)
  bulk('RPUSH', K_DONE, done)
  unlease(done)
end

local rids, rby = {}, {}
for _, rt in ipairs(req[3]) do
  rids[#rids + 1] = rt[1]
  rby[rt[1]] = rt
end
local retried, rh, rc = held_by(worker, rids, 'errors')
for j, id in ipairs(retried) do
  local rt = rby[id]
  local q, prio = head_qp(rh[j])
  local delay, msg, err = rt[2], rt[3], rt[4]
  local at = fmt(now + delay)
  set(id, 'status', 'pending')
  set(id, 'next_run', at)
  set(id, 'updated', nowf)
  set(id, 'last_error', msg)
  set(id, 'errors', append_error(rc.errors[j], err))
  rem[#rem + 1] = id
  make_pending(id, q, prio, at)
  add_count(nproc, q, -1)
  if delay <= 0 then wake = true end
end

local bids, bby = {}, {}
for _, b in ipairs(req[4]) do
  bids[#bids + 1] = b[1]
  bby[b[1]] = b
end
local buried, bh, bc = held_by(worker, bids, 'payload', 'attempts', 'created', 'errors',
  'unique_key')
for j, id in ipairs(buried) do
  local b = bby[id]
  local reason, msg, fp, maxa, err = b[2], b[3], b[4], b[5], b[6]
  local q, prio, name, row_max, has_ukey = split_head(bh[j])
  if row_max == '' then row_max = string.format('%d', maxa) end
  local dlid = string.format('%d', redis.call('INCR', K_DEAD_IDS))
  local errors = append_error(bc.errors[j], err)
  local dk = dkey(dlid)
  redis.call('HSET', dk, 'id', dlid, 'task_id', id, 'queue', q, 'task_name', name,
    'payload', bc.payload[j] or '{}', 'priority', prio,
    'attempts', bc.attempts[j] or '0', 'max_attempts', row_max, 'error', msg,
    'reason', reason, 'fingerprint', fp, 'created', bc.created[j] or '', 'died_at', nowf,
    'errors', errors, 'status', 'dead')
  local ukey = has_ukey and bc.unique_key[j]
  if ukey then redis.call('HSET', dk, 'unique_key', ukey) end
  set(id, 'status', 'dead')
  set(id, 'updated', nowf)
  set(id, 'last_error', msg)
  set(id, 'errors', errors)
  set(id, 'dead_letter_id', dlid)
  rem[#rem + 1] = id
  redis.call('ZADD', K_DEAD_ALL, dlid, dlid)
  redis.call('ZADD', K_DEAD_LIVE, dlid, dlid)
  if ukey then release_unique(ukey, id) end
  add_count(nproc, q, -1)
  add_count(ndead, q, 1)
end

local released, lh, lc = held_by(worker, req[5], 'attempts')
for j, id in ipairs(released) do
  set(id, 'status', 'pending')
  set(id, 'attempts', math.max(tonumber(lc.attempts[j] or '0') - 1, 0))
  set(id, 'next_run', nowf)
  set(id, 'updated', nowf)
  rem[#rem + 1] = id
  local q, prio = head_qp(lh[j])
  make_pending(id, q, prio, nowf)
  add_count(nproc, q, -1)
  wake = true
end

unlease(rem)
flush()
flush_pending()
flush_counts(K_NPROC, nproc)
flush_counts(K_NDONE, ndone)
flush_counts(K_NDEAD, ndead)
local result = 'null'
local c = req[6]
if c ~= NULL then
  local queues = c[3]
  if queues == NULL or #queues == 0 then queues = nil end
  result = cjson.encode(claim(worker, c[1], c[2], queues, now, nowf))
end
if wake then redis.call('PUBLISH', CHANNEL, '1') end
return result

-- name: renew
-- ARGV: P, worker, lease, ids...
local now = server_now()
local untilf = fmt(now + tonumber(ARGV[3]))
local ids = {}
for j = 4, #ARGV do ids[#ids + 1] = ARGV[j] end
local held = held_by(ARGV[2], ids)
local z = {}
for _, id in ipairs(held) do
  z[#z + 1] = untilf
  z[#z + 1] = id
end
if #z > 0 then bulk('ZADD', K_PROC, z) end
return held

-- name: rows
-- ARGV: P, ids... -> JSON [[id, then COLUMNS in order (null: absent), lease expiry], ...]
-- for the ids that exist
local ids = {}
for j = 2, #ARGV do ids[#ids + 1] = ARGV[j] end
local r = get(ids, unpack(COLUMNS))
local out = {}
for j, id in ipairs(ids) do
  if r.head[j] then
    local row = {id}
    for ci, c in ipairs(COLUMNS) do row[ci + 1] = r[c][j] or NULL end
    if r.lease[j] then row[4] = 'processing' end  -- COLUMNS[3] is status
    row[#COLUMNS + 2] = r.lease[j] and redis.call('ZSCORE', K_PROC, id) or NULL
    out[#out + 1] = row
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)

-- name: heads
-- ARGV: P, ids... -> JSON [[id, status, head], ...] for the ids that exist
local ids = {}
for j = 2, #ARGV do ids[#ids + 1] = ARGV[j] end
local r = get(ids, 'status', 'head', 'lease')
local out = {}
for j, id in ipairs(ids) do
  if r.head[j] then
    out[#out + 1] = {id, r.lease[j] and 'processing' or r.status[j] or 'pending', r.head[j]}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)

-- name: has_ready
-- ARGV: P, nq, queues...  -> 1 when a pending task is due or a lease has expired
local nowf = fmt(server_now())
local qs = read_queues(2)
if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
for _, q in ipairs(qs) do
  for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
    if #redis.call('ZRANGEBYSCORE', pend_key(q, p), '-inf', nowf, 'LIMIT', 0, 1) > 0 then
      return 1
    end
  end
end
if #redis.call('ZRANGEBYSCORE', K_PROC, '-inf', nowf, 'LIMIT', 0, 1) > 0 then return 1 end
return 0

-- name: next_due
-- ARGV: P, nq, queues...  -> seconds until the earliest pending task or lease expiry, or
-- false when there is none
local now = server_now()
local qs = read_queues(2)
if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
local best = false
for _, q in ipairs(qs) do
  for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
    local r = redis.call('ZRANGE', pend_key(q, p), 0, 0, 'WITHSCORES')
    if #r > 0 then
      local s = tonumber(r[2])
      if not best or s < best then best = s end
    end
  end
end
local r = redis.call('ZRANGE', K_PROC, 0, 0, 'WITHSCORES')
if #r > 0 then
  local s = tonumber(r[2])
  if not best or s < best then best = s end
end
if not best then return false end
return fmt(math.max(0, best - now))

-- name: counts
-- ARGV: P -> {now, {queue, pending, ready, oldest ready next_run or '', ...},
-- processing hash, done hash, dead hash}
local now = server_now()
local nowf = fmt(now)
local pend = {}
for _, q in ipairs(redis.call('SMEMBERS', K_ACTIVE)) do
  local total, ready, oldest = 0, 0, false
  for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
    local key = pend_key(q, p)
    total = total + redis.call('ZCARD', key)
    ready = ready + redis.call('ZCOUNT', key, '-inf', nowf)
    local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #r > 0 then
      local s = tonumber(r[2])
      if s <= now and (not oldest or s < oldest) then oldest = s end
    end
  end
  pend[#pend + 1] = q
  pend[#pend + 1] = total
  pend[#pend + 1] = ready
  pend[#pend + 1] = oldest and fmt(oldest) or ''
end
return {nowf, pend, redis.call('HGETALL', K_NPROC), redis.call('HGETALL', K_NDONE),
  redis.call('HGETALL', K_NDEAD)}

-- name: heartbeat
-- ARGV: P, worker id, JSON of the heartbeat
redis.call('HSET', K_WORKERS, ARGV[2], ARGV[3])
redis.call('ZADD', K_BEATS, fmt(server_now()), ARGV[2])
return 1

-- name: remove_worker
-- ARGV: P, worker id
redis.call('HDEL', K_WORKERS, ARGV[2])
redis.call('ZREM', K_BEATS, ARGV[2])
return 1

-- name: workers
-- ARGV: P -> {now, id, json, last_beat, ...}
local out = {fmt(server_now())}
local beats = redis.call('ZRANGE', K_BEATS, 0, -1, 'WITHSCORES')
for j = 1, #beats, 2 do
  local info = redis.call('HGET', K_WORKERS, beats[j])
  if info then
    out[#out + 1] = beats[j]
    out[#out + 1] = info
    out[#out + 1] = beats[j + 1]
  end
end
return out

-- name: prune_done
-- ARGV: P, older_than seconds, batch -> {rows removed, 1 if more may follow}.  The done list is in finishing
-- order, so the rows to prune are a prefix of it.  Like SQLite, the newest task id is
-- never removed.
local cutoff = server_now() - tonumber(ARGV[2])
local batch = tonumber(ARGV[3])
local newest = redis.call('GET', K_IDS)
local ids = redis.call('LRANGE', K_DONE, 0, batch - 1)
if #ids == 0 then return 0 end
local r = get(ids, 'status', 'updated', 'head')
local dels, keep = {}, false
local scanned = 0
local ndone = {}
for j, id in ipairs(ids) do
  if r.status[j] == 'done' then
    if tonumber(r.updated[j]) >= cutoff then break end
    if id == newest then
      keep = id
    else
      dels[#dels + 1] = id
      add_count(ndone, head_queue(r.head[j]), -1)
    end
  end
  scanned = j
end
if scanned > 0 then redis.call('LTRIM', K_DONE, scanned, -1) end
if keep then redis.call('RPUSH', K_DONE, keep) end
if #dels > 0 then
  for _, c in ipairs(COLUMNS) do bulk('HDEL', col(c), dels) end
end
flush_counts(K_NDONE, ndone)
-- more may follow when a whole batch went and something besides the newest id is left
local more = scanned == batch and redis.call('LLEN', K_DONE) > (keep and 1 or 0)
return {#dels, more and 1 or 0}

-- name: prune_workers
-- ARGV: P, stale_after seconds -> worker rows removed
local cutoff = fmt(server_now() - tonumber(ARGV[2]))
local stale = redis.call('ZRANGEBYSCORE', K_BEATS, '-inf', '(' .. cutoff)
for _, w in ipairs(stale) do
  redis.call('HDEL', K_WORKERS, w)
  redis.call('ZREM', K_BEATS, w)
end
return #stale

-- name: requeue_dead
-- ARGV: see select_dead().  -> {'ok', task ids...} or {'missing', dead id}
local now = server_now()
local nowf = fmt(now)
local sel, missing = select_dead()
if not sel then return {'missing', missing} end
local out = {'ok'}
local ndead = {}
for _, dlid in ipairs(sel) do
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'task_id', 'queue', 'task_name', 'payload', 'priority',
    'max_attempts', 'created', 'errors', 'unique_key')
  local id, q, prio = d[1], d[2], d[5]
  redis.call('HSET', dk, 'status', 'requeued', 'requeued_at', nowf)
  redis.call('ZREM', K_DEAD_LIVE, dlid)
  add_count(ndead, q, -1)
  local ukey = d[9]
  if ukey and redis.call('HEXISTS', K_UNIQUE, ukey) == 1 then ukey = false end
  local head = redis.call('HGET', col('head'), id)
  local cur = redis.call('HGET', col('status'), id)
  local revive = true
  if not head then  -- its row is gone (deleted by hand): write it again
    set(id, 'head', make_head(q, prio, d[3], d[6] or '', ukey))
    set(id, 'payload', d[4] or '{}')
    set(id, 'created', d[7] or '')
    set(id, 'errors', d[8] or '[]')
  elseif cur == 'dead' or cur == 'discarded' then
    local _, _, name, maxa = split_head(head)
    set(id, 'head', make_head(q, prio, name, maxa, ukey))
  else
    revive = false  -- already live again some other way
  end
  if revive then
    set(id, 'status', 'pending')
    set(id, 'attempts', '0')
    set(id, 'next_run', nowf)
    set(id, 'updated', nowf)
    set(id, 'dead_letter_id', dlid)
    if ukey then
      set(id, 'unique_key', ukey)
      redis.call('HSET', K_UNIQUE, ukey, id)
    else
      redis.call('HDEL', col('unique_key'), id)
    end
    make_pending(id, q, prio, nowf)
  end
  out[#out + 1] = id
  flush()
end
flush_pending()
flush_counts(K_NDEAD, ndead)
if #out > 1 then redis.call('PUBLISH', CHANNEL, '1') end
return out

-- name: discard_dead
-- ARGV: see select_dead().  -> {'ok', count} or {'missing', dead id}
local nowf = fmt(server_now())
local sel, missing = select_dead()
if not sel then return {'missing', missing} end
local ndead = {}
for _, dlid in ipairs(sel) do
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'task_id', 'queue')
  redis.call('HSET', dk, 'status', 'discarded', 'discarded_at', nowf)
  redis.call('ZREM', K_DEAD_LIVE, dlid)
  add_count(ndead, d[2], -1)
  if redis.call('HGET', col('status'), d[1]) == 'dead' then
    redis.call('HSET', col('status'), d[1], 'discarded')
    redis.call('HSET', col('updated'), d[1], nowf)
  end
end
flush_counts(K_NDEAD, ndead)
return {'ok', #sel}

-- name: migrate
-- ARGV: P, version -> {applied (0/1), version now stored}
local v = redis.call('HGET', K_META, 'schema_version')
if not v then
  redis.call('HSET', K_META, 'schema_version', ARGV[2])
  return {1, ARGV[2]}
end
return {0, v}
