-- Every state change of the Redis backend, one Lua script each (atomic on the server).
-- Blocks start with "-- name: NAME"; the "common" block is prepended to every other one.
-- ARGV[1] is always the key prefix P: every key and channel the scripts touch starts
-- with it (see backend.py for the layout).  Time is the server's (redis.call('TIME')).
-- "Empty string" stands for NULL in task hashes for locked_by, locked_until.
-- The hot scripts (enqueue, claim, complete) take their request as one JSON argument and
-- answer with one JSON string: cjson (C) on both ends instead of thousands of RESP items.
-- Invariant: Pqueue:leases has a field for a task exactly while its status is
-- 'processing'; the value is worker .. NUL .. ('1' if it has a unique key else '0') ..
-- queue, so acknowledging a batch reads every lease with one HMGET.

-- name: common
local P = ARGV[1]
local K_IDS = P .. 'queue:ids'
local K_ACTIVE = P .. 'queue:active'
local K_QUEUES = P .. 'queue:queues'
local K_PROC = P .. 'queue:processing'
local K_DONE = P .. 'queue:done'
local K_UNIQUE = P .. 'queue:unique'
local K_LEASES = P .. 'queue:leases'
local NULL = cjson.null
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

local function tkey(id) return P .. 'queue:task:' .. id end
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

local function append_error(old, err)
  if not old or old == '' or old == '[]' then return '[' .. err .. ']' end
  return string.sub(old, 1, -2) .. ',' .. err .. ']'
end

-- ZADD/ZREM/... with many arguments, in chunks (Lua's unpack has a stack limit)
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
  local out = {}
  local n = #fields
  local i = 1
  while i <= n do
    local j = math.min(i + 3999, n)
    local r = redis.call('HMGET', key, unpack(fields, i, j))
    for x = 1, #r do out[i + x - 1] = r[x] end
    i = j + 1
  end
  return out
end

local function add_count(tbl, q, n) tbl[q] = (tbl[q] or 0) + n end
local function flush_counts(key, tbl)
  for q, n in pairs(tbl) do
    if n ~= 0 then redis.call('HINCRBY', key, q, n) end
  end
end

local function make_pending(id, q, prio, nr)
  redis.call('ZADD', pend_key(q, prio), nr, pad(id))
  redis.call('ZADD', prio_key(q), prio, prio)
  redis.call('SADD', K_ACTIVE, q)
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

-- expired leases go back to pending (next_run = now) with the lapse recorded
local function rescue(now, nowf)
  local expired = redis.call('ZRANGEBYSCORE', K_PROC, '-inf', nowf, 'LIMIT', 0, 1000)
  local n = 0
  local nproc = {}
  for _, id in ipairs(expired) do
    local k = tkey(id)
    local r = redis.call('HMGET', k, 'status', 'attempts', 'locked_by', 'queue', 'priority',
      'errors')
    redis.call('ZREM', K_PROC, id)
    redis.call('HDEL', K_LEASES, id)
    if r[1] == 'processing' then
      local msg = 'lease expired: worker ' .. (r[3] or '?') ..
        ' stopped renewing it (died or hung)'
      local err = '{"attempt":' .. (r[2] or '0') .. ',"at":' .. nowf ..
        ',"type":"LeaseExpired","message":' .. cjson.encode(msg) .. ',"traceback":null}'
      redis.call('HSET', k, 'status', 'pending', 'locked_by', '', 'locked_until', '',
        'next_run', nowf, 'updated', nowf, 'last_error', msg,
        'errors', append_error(r[6], err))
      make_pending(id, r[4], r[5], nowf)
      add_count(nproc, r[4], -1)
      n = n + 1
    end
  end
  flush_counts(K_NPROC, nproc)
  return n
end

-- claim up to `limit` ready tasks of `queues` (nil: every queue with pending work) in
-- priority DESC, next_run, id order; returns {rescued, {{id, queue, name, payload,
-- attempts, max_attempts or null}, ...}}
local function claim(worker, limit, lease, queues, now, nowf)
  local out = {rescue(now, nowf)}
  if limit <= 0 then return out end
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
  for _, p in ipairs(prios) do
    if need <= 0 then break end
    local qlist = levels[p]
    if #qlist == 1 then
      local key = pend_key(qlist[1], p)
      local ms = redis.call('ZRANGEBYSCORE', key, '-inf', nowf, 'LIMIT', 0, need)
      if #ms > 0 then
        redis.call('ZREMRANGEBYRANK', key, 0, #ms - 1)
        for _, m in ipairs(ms) do taken[#taken + 1] = unpad(m) end
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
        taken[#taken + 1] = unpad(c[2])
        need = need - 1
      end
      for qi, cnt in pairs(per) do
        redis.call('ZREMRANGEBYRANK', pend_key(qlist[qi], p), 0, cnt - 1)
        tidy(qlist[qi], p)
      end
    end
  end
  if #taken == 0 then return {out[1], {}} end
  local untilf = fmt(now + lease)
  local zargs, largs, rows = {}, {}, {}
  local nproc = {}
  for _, id in ipairs(taken) do
    local k = tkey(id)
    local r = redis.call('HMGET', k, 'queue', 'task_name', 'payload', 'attempts',
      'max_attempts', 'unique_key')
    if r[1] then
      local att = tonumber(r[4] or '0') + 1
      redis.call('HSET', k, 'status', 'processing', 'attempts', att, 'locked_by', worker,
        'locked_until', untilf, 'updated', nowf)
      zargs[#zargs + 1] = untilf
      zargs[#zargs + 1] = id
      largs[#largs + 1] = id
      largs[#largs + 1] = worker .. '\0' .. (r[6] and '1' or '0') .. r[1]
      add_count(nproc, r[1], 1)
      rows[#rows + 1] = {id, r[1], r[2], r[3] or '{}', att, r[5] and tonumber(r[5]) or NULL}
    end
  end
  if #zargs > 0 then
    bulk('ZADD', K_PROC, zargs)
    bulk('HSET', K_LEASES, largs)
  end
  flush_counts(K_NPROC, nproc)
  return {out[1], rows}
end

-- a lease value (see the header) -> its worker matches?, has a unique key?, queue
local function lease_of(v, worker)
  if not v then return false end
  local n = #worker
  if string.sub(v, 1, n + 1) ~= worker .. '\0' then return false end
  return true, string.sub(v, n + 2, n + 2) == '1', string.sub(v, n + 3)
end

-- parse "nq, q1..qn" at ARGV[i]; returns queues (nil when nq = 0) and the next index
local function read_queues(i)
  local nq = tonumber(ARGV[i])
  if nq == 0 then return nil, i + 1 end
  local qs = {}
  for j = 1, nq do qs[j] = ARGV[i + j] end
  return qs, i + nq + 1
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
local zadds = {}
local ready = false
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
    local k = tkey(id)
    redis.call('HSET', k, 'id', id, 'queue', q, 'task_name', t[1], 'payload', t[2],
      'priority', prio, 'status', 'pending', 'attempts', '0', 'next_run', nrs,
      'created', created, 'updated', nowf)
    if t[5] ~= NULL then redis.call('HSET', k, 'max_attempts', string.format('%d', t[5])) end
    if ukey then
      redis.call('HSET', k, 'unique_key', ukey)
      redis.call('HSET', K_UNIQUE, ukey, id)
    end
    local pk = pend_key(q, prio)
    local z = zadds[pk]
    if not z then
      z = {}
      zadds[pk] = z
      redis.call('ZADD', prio_key(q), prio, prio)
      redis.call('SADD', K_ACTIVE, q)
      redis.call('SADD', K_QUEUES, q)
    end
    z[#z + 1] = nrs
    z[#z + 1] = pad(id)
    out[i] = id
  end
end
for pk, z in pairs(zadds) do bulk('ZADD', pk, z) end
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

local done = req[2]
if #done > 0 then
  local leases = hmget_many(K_LEASES, done)
  local dz = {}
  for j, id in ipairs(done) do
    local mine, has_ukey, q = lease_of(leases[j], worker)
    if mine then
      local k = tkey(id)
      redis.call('HSET', k, 'status', 'done', 'locked_by', '', 'locked_until', '',
        'updated', nowf)
      rem[#rem + 1] = id
      dz[#dz + 1] = nowf
      dz[#dz + 1] = id
      if has_ukey then release_unique(redis.call('HGET', k, 'unique_key'), id) end
      add_count(nproc, q, -1)
      add_count(ndone, q, 1)
    end
  end
  if #dz > 0 then bulk('ZADD', K_DONE, dz) end
end

for _, rt in ipairs(req[3]) do
  local id, delay, msg, err = rt[1], rt[2], rt[3], rt[4]
  local k = tkey(id)
  local r = redis.call('HMGET', k, 'status', 'locked_by', 'queue', 'priority', 'errors')
  if r[1] == 'processing' and r[2] == worker then
    local at = fmt(now + delay)
    redis.call('HSET', k, 'status', 'pending', 'locked_by', '', 'locked_until', '',
      'next_run', at, 'updated', nowf, 'last_error', msg, 'errors', append_error(r[5], err))
    rem[#rem + 1] = id
    make_pending(id, r[3], r[4], at)
    add_count(nproc, r[3], -1)
    if delay <= 0 then wake = true end
  end
end

for _, b in ipairs(req[4]) do
  local id, reason, msg, fp, maxa, err = b[1], b[2], b[3], b[4], b[5], b[6]
  local k = tkey(id)
  local r = redis.call('HMGET', k, 'status', 'locked_by', 'queue', 'task_name', 'payload',
    'priority', 'attempts', 'max_attempts', 'created', 'errors', 'unique_key')
  if r[1] == 'processing' and r[2] == worker then
    local dlid = string.format('%d', redis.call('INCR', K_DEAD_IDS))
    local errors = append_error(r[10], err)
    local dk = dkey(dlid)
    redis.call('HSET', dk, 'id', dlid, 'task_id', id, 'queue', r[3], 'task_name', r[4],
      'payload', r[5] or '{}', 'priority', r[6] or '0', 'attempts', r[7] or '0',
      'max_attempts', r[8] or string.format('%d', maxa), 'error', msg, 'reason', reason,
      'fingerprint', fp, 'created', r[9] or '', 'died_at', nowf, 'errors', errors,
      'status', 'dead')
    if r[11] then redis.call('HSET', dk, 'unique_key', r[11]) end
    redis.call('HSET', k, 'status', 'dead', 'locked_by', '', 'locked_until', '',
      'updated', nowf, 'last_error', msg, 'errors', errors, 'dead_letter_id', dlid)
    rem[#rem + 1] = id
    redis.call('ZADD', K_DEAD_ALL, dlid, dlid)
    redis.call('ZADD', K_DEAD_LIVE, dlid, dlid)
    if r[11] then release_unique(r[11], id) end
    add_count(nproc, r[3], -1)
    add_count(ndead, r[3], 1)
  end
end

for _, id in ipairs(req[5]) do
  local k = tkey(id)
  local r = redis.call('HMGET', k, 'status', 'locked_by', 'queue', 'priority', 'attempts')
  if r[1] == 'processing' and r[2] == worker then
    local att = math.max(tonumber(r[5] or '0') - 1, 0)
    redis.call('HSET', k, 'status', 'pending', 'locked_by', '', 'locked_until', '',
      'attempts', att, 'next_run', nowf, 'updated', nowf)
    rem[#rem + 1] = id
    make_pending(id, r[3], r[4], nowf)
    add_count(nproc, r[3], -1)
    wake = true
  end
end

if #rem > 0 then
  bulk('ZREM', K_PROC, rem)
  bulk('HDEL', K_LEASES, rem)
end
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
local worker = ARGV[2]
local untilf = fmt(now + tonumber(ARGV[3]))
local held, z, ids = {}, {}, {}
for j = 4, #ARGV do ids[#ids + 1] = ARGV[j] end
local leases = hmget_many(K_LEASES, ids)
for j, id in ipairs(ids) do
  if lease_of(leases[j], worker) then
    redis.call('HSET', tkey(id), 'locked_until', untilf)
    held[#held + 1] = id
    z[#z + 1] = untilf
    z[#z + 1] = id
  end
end
if #z > 0 then bulk('ZADD', K_PROC, z) end
return held

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
-- ARGV: P, older_than seconds, batch -> rows removed (never the newest task id, as SQLite)
local cutoff = fmt(server_now() - tonumber(ARGV[2]))
local batch = tonumber(ARGV[3])
local newest = redis.call('GET', K_IDS)
local ids = redis.call('ZRANGEBYSCORE', K_DONE, '-inf', '(' .. cutoff, 'LIMIT', 0, batch + 1)
local n = 0
local ndone = {}
local dels, rems = {}, {}
for _, id in ipairs(ids) do
  if n >= batch then break end
  if id ~= newest then
    local k = tkey(id)
    local r = redis.call('HMGET', k, 'status', 'queue')
    rems[#rems + 1] = id
    if r[1] == 'done' then
      dels[#dels + 1] = k
      add_count(ndone, r[2], -1)
      n = n + 1
    end
  end
end
if #rems > 0 then bulk('ZREM', K_DONE, rems) end
for _, k in ipairs(dels) do redis.call('DEL', k) end
flush_counts(K_NDONE, ndone)
return n

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
-- ARGV: P, 'ids', ids...  or  P, 'filter', task_name flag+name, queue flag+name
-- (flag '-' none, '+' then the value).  -> {'ok', task ids...} or {'missing', dead id}
local now = server_now()
local nowf = fmt(now)
local sel = {}
if ARGV[2] == 'ids' then
  for j = 3, #ARGV do
    if redis.call('HGET', dkey(ARGV[j]), 'status') ~= 'dead' then
      return {'missing', ARGV[j]}
    end
    sel[#sel + 1] = ARGV[j]
  end
else
  local name = ARGV[3] ~= '-' and string.sub(ARGV[3], 2) or false
  local queue = ARGV[4] ~= '-' and string.sub(ARGV[4], 2) or false
  for _, dlid in ipairs(redis.call('ZRANGE', K_DEAD_LIVE, 0, -1)) do
    local r = redis.call('HMGET', dkey(dlid), 'task_name', 'queue')
    if (not name or r[1] == name) and (not queue or r[2] == queue) then sel[#sel + 1] = dlid end
  end
end
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
  local k = tkey(id)
  local st = redis.call('HGET', k, 'status')
  local revive = true
  if st == 'dead' or st == 'discarded' then
    redis.call('HSET', k, 'status', 'pending', 'attempts', '0', 'next_run', nowf,
      'updated', nowf, 'locked_by', '', 'locked_until', '', 'dead_letter_id', dlid)
  elseif not st then  -- its hash is gone (deleted by hand): write it again
    redis.call('HSET', k, 'id', id, 'queue', q, 'task_name', d[3], 'payload', d[4] or '{}',
      'priority', prio, 'status', 'pending', 'attempts', '0', 'next_run', nowf,
      'created', d[7] or '', 'updated', nowf, 'errors', d[8] or '[]', 'dead_letter_id', dlid)
    if d[6] then redis.call('HSET', k, 'max_attempts', d[6]) end
  else
    revive = false  -- already live again some other way
  end
  if revive then
    if ukey then
      redis.call('HSET', k, 'unique_key', ukey)
      redis.call('HSET', K_UNIQUE, ukey, id)
    else
      redis.call('HDEL', k, 'unique_key')
    end
    make_pending(id, q, prio, nowf)
  end
  out[#out + 1] = id
end
flush_counts(K_NDEAD, ndead)
if #out > 1 then redis.call('PUBLISH', CHANNEL, '1') end
return out

-- name: discard_dead
-- ARGV: as requeue_dead -> {'ok', count} or {'missing', dead id}
local nowf = fmt(server_now())
local sel = {}
if ARGV[2] == 'ids' then
  for j = 3, #ARGV do
    if redis.call('HGET', dkey(ARGV[j]), 'status') ~= 'dead' then
      return {'missing', ARGV[j]}
    end
    sel[#sel + 1] = ARGV[j]
  end
else
  local name = ARGV[3] ~= '-' and string.sub(ARGV[3], 2) or false
  local queue = ARGV[4] ~= '-' and string.sub(ARGV[4], 2) or false
  for _, dlid in ipairs(redis.call('ZRANGE', K_DEAD_LIVE, 0, -1)) do
    local r = redis.call('HMGET', dkey(dlid), 'task_name', 'queue')
    if (not name or r[1] == name) and (not queue or r[2] == queue) then sel[#sel + 1] = dlid end
  end
end
local ndead = {}
for _, dlid in ipairs(sel) do
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'task_id', 'queue')
  redis.call('HSET', dk, 'status', 'discarded', 'discarded_at', nowf)
  redis.call('ZREM', K_DEAD_LIVE, dlid)
  add_count(ndead, d[2], -1)
  local k = tkey(d[1])
  if redis.call('HGET', k, 'status') == 'dead' then
    redis.call('HSET', k, 'status', 'discarded', 'updated', nowf)
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
