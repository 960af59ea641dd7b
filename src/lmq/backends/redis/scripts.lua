-- Every state change of the Redis backend, one Lua script each (atomic on the server).
-- Blocks start with "-- name: NAME"; the "common" block is prepended to every other one.
-- ARGV[1] is always the key prefix P: every key and channel the scripts touch starts
-- with it (see backend.py for the layout).  Time is the server's (redis.call('TIME')).
--
-- Tasks are stored by column, like the SQL table: one hash per column
-- (P queue:tasks:<column>, field = task id), so a batch of n tasks is read or written
-- with one HMGET / HSET per column instead of one command per task.  Columns that the
-- hot path reads together are packed:
--   head  = queue NUL priority NUL task_name NUL max_attempts ('' = none) NUL flags,
--           one character '0' + (1 = unique key, 2 = batch member, 4 = breaker,
--           8 = rate key), written at enqueue (and by a requeue or a deferral);
--   lease = worker NUL head, present exactly while the task is 'processing', so one
--           HMGET of the lease column checks a whole batch of acknowledgements;
-- the lease expiry lives only in the processing zset (its score).  The status column
-- holds pending (or nothing: pending), done, dead or discarded; a task with a lease is
-- 'processing' whatever the column says (a claim writes no status).  An absent
-- attempts is 0.
-- The hot scripts (enqueue, claim, complete) take their request as one JSON argument and
-- answer with one JSON string: cjson (C) on both ends instead of thousands of RESP items.
--
-- Lanes (layout 3).  A pending task waits in exactly one "home lane" zset, scored by
-- next_run, members zero-padded ids: the plain lane of its queue and priority
-- (pend_key), or, with a rate key, the rate key's lane of that queue and priority
-- (rpend_key; only rate claims read it).  A task with a breaker is also in its
-- breaker's zset of that queue (bk_key), always; while the breaker is blocked (a stored
-- row whose state is not closed: the set K_BLOCKED, kept by put_breaker and
-- delete_breaker) the task is in no home lane, only there ("parked"), and put_breaker
-- moves every one of them back when the breaker closes.  So plain and rate claims never
-- meet a blocked task, and a probe claim reads the breaker's zsets.  Every script that
-- makes a task pending goes through place(); every one that takes a task out of pending
-- takes it out of both.

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
local K_NCANC = P .. 'queue:n:cancelled'
local K_PAUSED = P .. 'queue:paused'
local K_BATCHES = P .. 'queue:batches'
local K_BOPEN = P .. 'queue:batches_open'
local K_BDONE = P .. 'queue:batches_done'
local K_APPROVED = P .. 'queue:dead_approved'
local K_DEAD_FPS = P .. 'queue:dead_fps'
local K_DEAD_GONE = P .. 'queue:dead_gone'
local K_DEAD_REJ = P .. 'queue:dead_rejected'
local K_BLOCKED = P .. 'queue:breakers_blocked'
local K_BRKS = P .. 'queue:breakers'
local K_RKEYS = P .. 'queue:rate_keys'
local NULL = cjson.null
local COLUMNS = {'head', 'payload', 'status', 'attempts', 'next_run', 'created', 'updated',
  'lease', 'last_error', 'unique_key', 'errors', 'dead_letter_id', 'batch', 'breaker',
  'rate_key'}

local function col(name) return P .. 'queue:tasks:' .. name end
local function dkey(id) return P .. 'queue:dead:' .. id end
local function prio_key(q) return P .. 'queue:prio:' .. q end
local function pend_key(q, prio) return P .. 'queue:pending:' .. q .. ':' .. prio end
local function bkey(name) return P .. 'queue:batch:' .. name end
local function fpkey(fp) return P .. 'queue:dead_fp:' .. fp end
-- two free-form names in one key: the first one length-prefixed, so no two pairs meet
local function rpend_key(rk, q, prio)
  return P .. 'queue:rpending:' .. #rk .. ':' .. rk .. ':' .. q .. ':' .. prio
end
local function rlanes_key(rk) return P .. 'queue:rlanes:' .. rk end  -- set of 'prio:queue'
local function bk_key(b, q) return P .. 'queue:bk:' .. #b .. ':' .. b .. ':' .. q end
local function bkq_key(b) return P .. 'queue:bkq:' .. b end  -- set of queues with bk zsets

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
-- pending members are zero-padded ids: equal scores (next_run) then sort by id
local function pad(id) return string.rep('0', 16 - #id) .. id end
local function unpad(m) return string.match(m, '^0*(%d+)$') end

-- the last field of a head holds flags, as the character '0' + f: 1 = has a unique key,
-- 2 = a batch member, 4 = has a breaker, 8 = has a rate key ('0'..'?'); heads written
-- before layout 3 hold '0'..'3', the same flags.  So a byte >= 50 ('2') means "more
-- than a plain task" and the hot path tests only that.
local function make_head(q, prio, name, maxa, with_ukey, member, brk, rk)
  local f = (with_ukey and 1 or 0) + (member and 2 or 0) + (brk and 4 or 0) +
    (rk and 8 or 0)
  return q .. '\0' .. prio .. '\0' .. name .. '\0' .. maxa .. '\0' .. string.char(48 + f)
end
local function hflags(h) return string.byte(h, -1) - 48 end
-- head -> queue, priority, task_name, max_attempts ('' = none), has a unique key?, in a
-- batch?, has a breaker?, has a rate key?
local function split_head(h)
  local q, prio, name, maxa, flag = string.match(h, '^(.-)%z(.-)%z(.*)%z(.-)%z(.)$')
  local f = string.byte(flag) - 48
  return q, prio, name, maxa, f % 2 == 1, f % 4 >= 2, f % 8 >= 4, f >= 8
end
local function has_ukey(h) return hflags(h) % 2 == 1 end
local function in_batch(h) return hflags(h) % 4 >= 2 end
local function keyed(h) return string.byte(h, -1) >= 52 end  -- a breaker or a rate key
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
-- the same for a rate key's lane (its lane set and the set of rate keys learn it) and a
-- breaker's zset of a queue
local function rmake_pending(id, rk, q, prio, nr)
  local k = rpend_key(rk, q, prio)
  local z = PEND[k]
  if not z then
    z = {}
    PEND[k] = z
    redis.call('SADD', rlanes_key(rk), prio .. ':' .. q)
    redis.call('SADD', K_RKEYS, rk)
  end
  z[#z + 1] = nr
  z[#z + 1] = pad(id)
end
local function bmake(id, b, q, nr)
  local k = bk_key(b, q)
  local z = PEND[k]
  if not z then
    z = {}
    PEND[k] = z
    redis.call('SADD', bkq_key(b), q)
  end
  z[#z + 1] = nr
  z[#z + 1] = pad(id)
end
local function flush_pending()
  for k, z in pairs(PEND) do bulk('ZADD', k, z) end
  PEND = {}
end

-- is breaker b blocked (a stored state other than closed)?  Cached for the script.
local BLK = {}
local function blocked(b)
  local v = BLK[b]
  if v == nil then
    v = redis.call('SISMEMBER', K_BLOCKED, b) == 1
    BLK[b] = v
  end
  return v
end

-- a task becomes pending at nr: into its breaker's zset (b: its breaker or false), and
-- into its home lane (the rate key rk's, or the plain one) unless the breaker is
-- blocked.  Returns whether it went into a home lane (claimable).
local function place(id, q, prio, nr, b, rk)
  if b then
    bmake(id, b, q, nr)
    if blocked(b) then return false end
  end
  if rk then rmake_pending(id, rk, q, prio, nr) else make_pending(id, q, prio, nr) end
  return true
end

-- the breaker and rate key of each id whose head has their flags (aligned with ids,
-- false for none): two HMGETs at most, none when no head has a key
local function keys_for(ids, heads)
  local bs, rs = {}, {}
  local bsel, bpos, rsel, rpos = {}, {}, {}, {}
  for j = 1, #ids do
    bs[j] = false
    rs[j] = false
    local h = heads[j]
    if h and string.byte(h, -1) >= 52 then
      local f = string.byte(h, -1) - 48
      if f >= 8 then
        rsel[#rsel + 1] = ids[j]
        rpos[#rpos + 1] = j
      end
      if f % 8 >= 4 then
        bsel[#bsel + 1] = ids[j]
        bpos[#bpos + 1] = j
      end
    end
  end
  if #bsel > 0 then
    local r = hmget_many(col('breaker'), bsel)
    for x = 1, #bsel do bs[bpos[x]] = r[x] or false end
  end
  if #rsel > 0 then
    local r = hmget_many(col('rate_key'), rsel)
    for x = 1, #rsel do rs[rpos[x]] = r[x] or false end
  end
  return bs, rs
end

-- batch member counters (fields pending, processing, done, dead, cancelled, discarded of
-- the batch hash), buffered: bump(batch, field, n) ... flush_batches(now)
local BC, BFIN = {}, {}
local function bump(b, field, n)
  local t = BC[b]
  if not t then
    t = {}
    BC[b] = t
  end
  t[field] = (t[field] or 0) + n
end
local function flush_batches(nowf)
  for b, t in pairs(BC) do
    local k = bkey(b)
    for f, n in pairs(t) do
      if n ~= 0 then redis.call('HINCRBY', k, f, n) end
    end
  end
  for b in pairs(BFIN) do redis.call('HSET', bkey(b), 'last_finished', nowf) end
  BC, BFIN = {}, {}
end
-- the batch of each id whose head has the batch flag (heads aligned with ids, false for
-- none): {{id, batch, j}, ...}; one HMGET, and none when no head has the flag
local function members(ids, heads)
  local sel, pos = {}, {}
  for j = 1, #ids do
    local h = heads[j]
    if h and in_batch(h) then
      sel[#sel + 1] = ids[j]
      pos[#pos + 1] = j
    end
  end
  if #sel == 0 then return sel end
  local r = hmget_many(col('batch'), sel)
  local out = {}
  for x, id in ipairs(sel) do
    if r[x] then out[#out + 1] = {id, r[x], pos[x]} end
  end
  return out
end
-- move the members among ids from one counter to another (fin: they finished now)
local function move(ids, heads, from, to, fin)
  for _, m in ipairs(members(ids, heads)) do
    if from then bump(m[2], from, -1) end
    if to then bump(m[2], to, 1) end
    if fin then BFIN[m[2]] = true end
  end
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

-- a rate key's lane that ran empty leaves its lane set (and the key the set of rate
-- keys); a breaker's zset that ran empty leaves the breaker's queue set
local function rtidy(rk, q, prio)
  if redis.call('EXISTS', rpend_key(rk, q, prio)) == 0 then
    redis.call('SREM', rlanes_key(rk), prio .. ':' .. q)
    if redis.call('EXISTS', rlanes_key(rk)) == 0 then redis.call('SREM', K_RKEYS, rk) end
  end
end
local function btidy(b, q)
  if redis.call('EXISTS', bk_key(b, q)) == 0 then redis.call('SREM', bkq_key(b), q) end
end

-- zset removals, buffered per key, each key tidied after: zrem_later(key, member,
-- tidy function, its arguments) ... flush_zrem()
local ZR = {}
local function zrem_later(key, member, tf, a1, a2, a3)
  local e = ZR[key]
  if not e then
    e = {{}, tf, a1, a2, a3}
    ZR[key] = e
  end
  local m = e[1]
  m[#m + 1] = member
end
local function flush_zrem()
  for key, e in pairs(ZR) do
    bulk('ZREM', key, e[1])
    e[2](e[3], e[4], e[5])
  end
  ZR = {}
end
-- take a task out of its home lane (it is leaving pending another way)
local function home_zrem(id, q, prio, rk)
  if rk then
    zrem_later(rpend_key(rk, q, prio), pad(id), rtidy, rk, q, prio)
  else
    zrem_later(pend_key(q, prio), pad(id), tidy, q, prio)
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
  local heads = {}
  for j, v in ipairs(r.lease) do
    heads[j] = false
    if v then heads[j] = string.sub(v, string.find(v, '\0', 1, true) + 1) end
  end
  local bs, rs = keys_for(expired, heads)
  for j, id in ipairs(expired) do
    local v = r.lease[j]
    if v then
      local worker = string.sub(v, 1, string.find(v, '\0', 1, true) - 1)
      local q, prio = head_qp(heads[j])
      local msg = 'lease expired: worker ' .. worker .. ' stopped renewing it (died or hung)'
      local err = '{"attempt":' .. (r.attempts[j] or '0') .. ',"at":' .. nowf ..
        ',"type":"LeaseExpired","message":' .. cjson.encode(msg) .. ',"traceback":null}'
      set(id, 'status', 'pending')
      set(id, 'next_run', nowf)
      set(id, 'updated', nowf)
      set(id, 'last_error', msg)
      set(id, 'errors', append_error(r.errors[j], err))
      place(id, q, prio, nowf, bs[j], rs[j])
      add_count(nproc, q, -1)
      n = n + 1
    end
  end
  move(expired, heads, 'processing', 'pending')
  unlease(expired)
  flush()
  flush_pending()
  flush_counts(K_NPROC, nproc)
  flush_batches(nowf)
  return n
end

-- take up to `need` ready members of the lanes in `levels` (a list, best level first, of
-- lists of lanes {zset key, tidy function, its arguments...}), by (next_run, id) within a
-- level, out of their zsets; appends the ids to `taken` and returns how many are still
-- needed
local function take(levels, need, nowf, taken)
  local nt = #taken
  for _, lanes in ipairs(levels) do
    if need <= 0 then break end
    if #lanes == 1 then
      local ln = lanes[1]
      local key = ln[1]
      local ms = redis.call('ZRANGEBYSCORE', key, '-inf', nowf, 'LIMIT', 0, need)
      if #ms > 0 then
        redis.call('ZREMRANGEBYRANK', key, 0, #ms - 1)
        for _, m in ipairs(ms) do
          nt = nt + 1
          taken[nt] = unpad(m)
        end
        need = need - #ms
        ln[2](ln[3], ln[4], ln[5])
      end
    else
      -- one level over several lanes: merge their heads by (next_run, id)
      local cands = {}
      for li, ln in ipairs(lanes) do
        local r = redis.call('ZRANGEBYSCORE', ln[1], '-inf', nowf, 'WITHSCORES', 'LIMIT', 0,
          need)
        for j = 1, #r, 2 do cands[#cands + 1] = {tonumber(r[j + 1]), r[j], li} end
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
      for li, cnt in pairs(per) do
        local ln = lanes[li]
        redis.call('ZREMRANGEBYRANK', ln[1], 0, cnt - 1)
        ln[2](ln[3], ln[4], ln[5])
      end
    end
  end
  return need
end

-- lanes of a map priority -> lanes, as levels from the highest priority down
local function by_priority(levels, prios)
  table.sort(prios, function(a, b) return tonumber(a) > tonumber(b) end)
  local out = {}
  for i, p in ipairs(prios) do out[i] = levels[p] end
  return out
end

-- may a claim for the queues `qset` (a set, or false: any) skipping `skip` (a set, or
-- false) take from q?
local function wanted(q, qset, skip)
  return (not qset or qset[q]) and not (skip and skip[q])
end
-- a list as a set (false for nil)
local function as_set(list)
  if not list then return false end
  local out = {}
  for _, x in ipairs(list) do out[x] = true end
  return out
end

-- claim up to `limit` ready tasks of `queues` (nil: every queue with pending work) in
-- priority DESC, next_run, id order; returns {rescued, {{id, head, payload, attempts
-- [, breaker|null, rate_key|null: for a task with either]}, ...}}
-- `exclude` (nil, or a list): paused queues, never claimed.  `brk` (a probe claim:
-- only tasks behind that breaker, blocked or not, by next_run, id) and `rk` (a rate
-- claim: only tasks of that rate key) are nil for a plain claim (only the plain lanes).
local function claim(worker, limit, lease, queues, now, nowf, exclude, brk, rk)
  local rescued = rescue(now, nowf)
  if limit <= 0 then return {rescued, {}} end
  local skip = false
  if exclude and #exclude > 0 then
    skip = {}
    for _, q in ipairs(exclude) do skip[q] = true end
  end
  local levels = {}
  local qset = (brk or rk) and as_set(queues)
  if brk then
    local lanes = {}
    for _, q in ipairs(redis.call('SMEMBERS', bkq_key(brk))) do
      if wanted(q, qset, skip) then
        lanes[#lanes + 1] = {bk_key(brk, q), btidy, brk, q}
      end
    end
    if #lanes > 0 then levels[1] = lanes end
  elseif rk then
    local lv, prios = {}, {}
    for _, m in ipairs(redis.call('SMEMBERS', rlanes_key(rk))) do
      local p, q = string.match(m, '^([^:]*):(.*)$')
      if wanted(q, qset, skip) then
        local l = lv[p]
        if not l then
          l = {}
          lv[p] = l
          prios[#prios + 1] = p
        end
        l[#l + 1] = {rpend_key(rk, q, p), rtidy, rk, q, p}
      end
    end
    levels = by_priority(lv, prios)
  else
    local qs = queues
    if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
    local lv, prios = {}, {}
    for _, q in ipairs(qs) do
      if not (skip and skip[q]) then
        for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
          local l = lv[p]
          if not l then
            l = {}
            lv[p] = l
            prios[#prios + 1] = p
          end
          l[#l + 1] = {pend_key(q, p), tidy, q, p}
        end
      end
    end
    levels = by_priority(lv, prios)
  end
  local taken = {}
  take(levels, limit, nowf, taken)
  local nt = #taken
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
  local nb = false  -- a batch member, or a task with a breaker or rate key, among them
  local kj = {}  -- positions of the keyed ones in taken, and their rows
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
      local row = {id, h, payloads[j] or '{}', att}
      rows[nr] = row
      if string.byte(h, -1) >= 50 then
        nb = true
        if string.byte(h, -1) >= 52 then kj[#kj + 1] = {j, row} end
      end
    end
  end
  if k > 0 then
    bulk('HSET', col('attempts'), a_att)
    bulk('HSET', col('lease'), a_lease)
    bulk('HSET', col('updated'), a_upd)
    bulk('ZADD', K_PROC, zargs)
  end
  flush_counts(K_NPROC, nproc)
  if nb then
    move(taken, heads, 'pending', 'processing')
    flush_batches(nowf)
  end
  if #kj > 0 then
    -- a keyed task leaves pending everywhere it waited: its breaker's zset (plain and
    -- rate claims), its home lane (a probe claim, unless the breaker is blocked)
    local bs, rs = keys_for(taken, heads)
    for _, e in ipairs(kj) do
      local j, row = e[1], e[2]
      local b, r = bs[j], rs[j]
      row[5] = b or NULL
      row[6] = r or NULL
      local q, prio = head_qp(heads[j])
      if brk then
        if not blocked(brk) then home_zrem(taken[j], q, prio, r) end
      elseif b then
        zrem_later(bk_key(b, q), pad(taken[j]), btidy, b, q)
      end
    end
    flush_zrem()
  end
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

-- name: enqueue
-- ARGV: P, created, JSON list of models.NewTask tuples (see enqueue_tasks), then a
-- BatchSpec as JSON [name, total, on_complete_task|null, payload, queue] or '' ->
-- "id,id,..."
-- include: lib_enqueue
local now = server_now()
local nowf = fmt(now)
local spec = ARGV[4]
if spec and spec ~= '' then
  spec = cjson.decode(spec)
  local k = bkey(spec[1])
  if not redis.call('HGET', k, 'created') then
    redis.call('HSET', k, 'created', nowf, 'total', spec[2])
    redis.call('ZADD', K_BATCHES, nowf, spec[1])
    redis.call('SADD', K_BOPEN, spec[1])
  else
    redis.call('HINCRBY', k, 'total', spec[2])
  end
  if spec[3] ~= NULL and not redis.call('HGET', k, 'on_complete_task') then
    redis.call('HSET', k, 'on_complete_task', spec[3], 'on_complete_payload', spec[4],
      'on_complete_queue', spec[5])
  end
end
local out, ready = enqueue_tasks(now, nowf, ARGV[2], cjson.decode(ARGV[3]))
if ready then redis.call('PUBLISH', CHANNEL, '1') end
return table.concat(out, ',')

-- name: claim
-- ARGV: P, JSON [worker, limit, lease, queues|null, exclude (only when non-empty, or
-- when a breaker or rate key follows), breaker|null, rate_key|null (only for a probe or
-- rate claim)] -> JSON {rescued, rows} (see claim())
local now = server_now()
local req = cjson.decode(ARGV[2])
local queues = req[4]
if queues == NULL or #queues == 0 then queues = nil end
local brk, rk = req[6], req[7]
if brk == NULL then brk = nil end
if rk == NULL then rk = nil end
return cjson.encode(claim(req[1], req[2], req[3], queues, now, fmt(now), req[5], brk, rk))

-- name: complete
-- ARGV: P, JSON [worker, done ids, retries [[id, delay, message, error json]],
-- burials [[id, reason, message, fingerprint, max_attempts, error json]], released ids,
-- claim [limit, lease, queues|null, then as the claim script's request] or null,
-- deferred [[id, delay, breaker|null, rate_key|null]] (absent: none)] -> JSON claim
-- result, or "null"
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
    if has_ukey(h) then
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
  move(done, dh, 'processing', 'done', true)
end

local rids, rby = {}, {}
for _, rt in ipairs(req[3]) do
  rids[#rids + 1] = rt[1]
  rby[rt[1]] = rt
end
local retried, rh, rc = held_by(worker, rids, 'errors')
local rbs, rrs = keys_for(retried, rh)
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
  if place(id, q, prio, at, rbs[j], rrs[j]) and delay <= 0 then wake = true end
  add_count(nproc, q, -1)
end
move(retried, rh, 'processing', 'pending')

local bids, bby = {}, {}
for _, b in ipairs(req[4]) do
  bids[#bids + 1] = b[1]
  bby[b[1]] = b
end
local buried, bh, bc = held_by(worker, bids, 'payload', 'attempts', 'created', 'errors',
  'unique_key', 'batch', 'breaker', 'rate_key')
for j, id in ipairs(buried) do
  local b = bby[id]
  local reason, msg, fp, maxa, err = b[2], b[3], b[4], b[5], b[6]
  local q, prio, name, row_max, with_ukey, member = split_head(bh[j])
  if row_max == '' then row_max = string.format('%d', maxa) end
  local dlid = string.format('%d', redis.call('INCR', K_DEAD_IDS))
  local errors = append_error(bc.errors[j], err)
  local dk = dkey(dlid)
  redis.call('HSET', dk, 'id', dlid, 'task_id', id, 'queue', q, 'task_name', name,
    'payload', bc.payload[j] or '{}', 'priority', prio,
    'attempts', bc.attempts[j] or '0', 'max_attempts', row_max, 'error', msg,
    'reason', reason, 'fingerprint', fp, 'created', bc.created[j] or '', 'died_at', nowf,
    'errors', errors, 'status', 'dead')
  local ukey = with_ukey and bc.unique_key[j]
  if ukey then redis.call('HSET', dk, 'unique_key', ukey) end
  if bc.breaker[j] then redis.call('HSET', dk, 'breaker', bc.breaker[j]) end
  if bc.rate_key[j] then redis.call('HSET', dk, 'rate_key', bc.rate_key[j]) end
  local batch = member and bc.batch[j]
  if batch then
    redis.call('HSET', dk, 'batch', batch)
    bump(batch, 'processing', -1)
    bump(batch, 'dead', 1)
    BFIN[batch] = true
  end
  set(id, 'status', 'dead')
  set(id, 'updated', nowf)
  set(id, 'last_error', msg)
  set(id, 'errors', errors)
  set(id, 'dead_letter_id', dlid)
  rem[#rem + 1] = id
  redis.call('ZADD', K_DEAD_ALL, dlid, dlid)
  redis.call('ZADD', K_DEAD_LIVE, dlid, dlid)
  redis.call('ZADD', fpkey(fp), nowf, dlid)
  redis.call('SADD', K_DEAD_FPS, fp)
  if ukey then release_unique(ukey, id) end
  add_count(nproc, q, -1)
  add_count(ndead, q, 1)
end

local released, lh, lc = held_by(worker, req[5], 'attempts')
local lbs, lrs = keys_for(released, lh)
for j, id in ipairs(released) do
  set(id, 'status', 'pending')
  set(id, 'attempts', math.max(tonumber(lc.attempts[j] or '0') - 1, 0))
  set(id, 'next_run', nowf)
  set(id, 'updated', nowf)
  rem[#rem + 1] = id
  local q, prio = head_qp(lh[j])
  if place(id, q, prio, nowf, lbs[j], lrs[j]) then wake = true end
  add_count(nproc, q, -1)
end
move(released, lh, 'processing', 'pending')

-- deferred: held back by a breaker or rate limit, not run: like released, due at now +
-- delay, and the breaker / rate key given written into the row (and its head's flags)
local fids, fby = {}, {}
for _, f in ipairs(req[7] or {}) do
  fids[#fids + 1] = f[1]
  fby[f[1]] = f
end
local deferred, fh, fc = held_by(worker, fids, 'attempts')
local fbs, frs = keys_for(deferred, fh)
for j, id in ipairs(deferred) do
  local f = fby[id]
  local delay = f[2]
  local b, r = fbs[j], frs[j]
  local h = fh[j]
  if (f[3] ~= NULL and f[3] ~= b) or (f[4] ~= NULL and f[4] ~= r) then
    if f[3] ~= NULL then
      b = f[3]
      set(id, 'breaker', b)
    end
    if f[4] ~= NULL then
      r = f[4]
      set(id, 'rate_key', r)
    end
    local q, prio, name, maxa, with_ukey, member = split_head(h)
    h = make_head(q, prio, name, maxa, with_ukey, member, b, r)
    set(id, 'head', h)
  end
  local at = fmt(now + delay)
  set(id, 'status', 'pending')
  set(id, 'attempts', math.max(tonumber(fc.attempts[j] or '0') - 1, 0))
  set(id, 'next_run', at)
  set(id, 'updated', nowf)
  rem[#rem + 1] = id
  local q, prio = head_qp(h)
  if place(id, q, prio, at, b, r) and delay <= 0 then wake = true end
  add_count(nproc, q, -1)
end
move(deferred, fh, 'processing', 'pending')

unlease(rem)
flush()
flush_pending()
flush_counts(K_NPROC, nproc)
flush_counts(K_NDONE, ndone)
flush_counts(K_NDEAD, ndead)
flush_batches(nowf)
local result = 'null'
local c = req[6]
if c ~= NULL then
  local queues = c[3]
  if queues == NULL or #queues == 0 then queues = nil end
  local brk, rk = c[5], c[6]
  if brk == NULL then brk = nil end
  if rk == NULL then rk = nil end
  result = cjson.encode(claim(worker, c[1], c[2], queues, now, nowf, c[4], brk, rk))
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
-- ARGV: P, nq, queues..., [ne, excluded queues...]  -> 1 when a pending task is due or a
-- lease has expired
local nowf = fmt(server_now())
local qs, nxt = read_queues(2)
if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
local skip = {}
if ARGV[nxt] then
  local ex = read_queues(nxt)
  for _, q in ipairs(ex or {}) do skip[q] = true end
end
for _, q in ipairs(qs) do
  if not skip[q] then
    for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
      if #redis.call('ZRANGEBYSCORE', pend_key(q, p), '-inf', nowf, 'LIMIT', 0, 1) > 0 then
        return 1
      end
    end
  end
end
if #redis.call('ZRANGEBYSCORE', K_PROC, '-inf', nowf, 'LIMIT', 0, 1) > 0 then return 1 end
return 0

-- name: next_due
-- ARGV: P, nq, queues..., [ne, excluded queues...]  -> seconds until the earliest pending
-- task or lease expiry, or false when there is none
local now = server_now()
local qs, nxt = read_queues(2)
if not qs then qs = redis.call('SMEMBERS', K_ACTIVE) end
local skip = {}
if ARGV[nxt] then
  local ex = read_queues(nxt)
  for _, q in ipairs(ex or {}) do skip[q] = true end
end
local best = false
for _, q in ipairs(qs) do
  if not skip[q] then
    for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
      local r = redis.call('ZRANGE', pend_key(q, p), 0, 0, 'WITHSCORES')
      if #r > 0 then
        local s = tonumber(r[2])
        if not best or s < best then best = s end
      end
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
-- ARGV: P -> {now, {queue, pending, ready, oldest ready next_run or '', ...} (a queue
-- may come several times: its plain lanes, rate keys' lanes and parked tasks),
-- processing hash, done hash, dead hash, cancelled hash}
local now = server_now()
local nowf = fmt(now)
local pend = {}
local function tally(q, keys)
  local total, ready, oldest = 0, 0, false
  for _, key in ipairs(keys) do
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
for _, q in ipairs(redis.call('SMEMBERS', K_ACTIVE)) do
  local keys = {}
  for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do
    keys[#keys + 1] = pend_key(q, p)
  end
  tally(q, keys)
end
for _, rk in ipairs(redis.call('SMEMBERS', K_RKEYS)) do
  for _, m in ipairs(redis.call('SMEMBERS', rlanes_key(rk))) do
    local p, q = string.match(m, '^([^:]*):(.*)$')
    tally(q, {rpend_key(rk, q, p)})
  end
end
for _, b in ipairs(redis.call('SMEMBERS', K_BLOCKED)) do
  for _, q in ipairs(redis.call('SMEMBERS', bkq_key(b))) do tally(q, {bk_key(b, q)}) end
end
return {nowf, pend, redis.call('HGETALL', K_NPROC), redis.call('HGETALL', K_NDONE),
  redis.call('HGETALL', K_NDEAD), redis.call('HGETALL', K_NCANC)}

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
-- ARGV: P, older_than seconds, batch -> {rows removed, 1 if more may follow}.  The done
-- list holds done and cancelled ids in finishing order, so the rows to prune are a
-- prefix of it.  Like SQLite, the newest task id is never removed.
local now = server_now()
local cutoff = now - tonumber(ARGV[2])
local batch = tonumber(ARGV[3])
local newest = redis.call('GET', K_IDS)
local ids = redis.call('LRANGE', K_DONE, 0, batch - 1)
if #ids == 0 then return {0, 0} end
local r = get(ids, 'status', 'updated', 'head')
local dels, keep = {}, false
local scanned = 0
local ndone, ncanc = {}, {}
local dheads = {}
for j, id in ipairs(ids) do
  local st = r.status[j]
  if st == 'done' or st == 'cancelled' then
    if tonumber(r.updated[j]) >= cutoff then break end
    if id == newest then
      keep = id
    else
      dels[#dels + 1] = id
      dheads[#dels] = r.head[j]
      add_count(st == 'done' and ndone or ncanc, head_queue(r.head[j]), -1)
    end
  end
  scanned = j
end
if scanned > 0 then redis.call('LTRIM', K_DONE, scanned, -1) end
if keep then redis.call('RPUSH', K_DONE, keep) end
if #dels > 0 then
  local st = get(dels, 'status').status
  for _, m in ipairs(members(dels, dheads)) do bump(m[2], st[m[3]], -1) end
  for _, c in ipairs(COLUMNS) do bulk('HDEL', col(c), dels) end
end
flush_counts(K_NDONE, ndone)
flush_counts(K_NCANC, ncanc)
flush_batches(fmt(now))
-- more may follow when a whole batch went and something besides the newest id is left
local more = scanned == batch and redis.call('LLEN', K_DONE) > (keep and 1 or 0)
return {#dels, more and 1 or 0}

-- name: prune_dead
-- ARGV: P, older_than seconds, batch -> {letters removed, 1 if more may follow}: dead
-- letters re-queued or discarded, or rejected, longer ago than older_than
local now = server_now()
local cutoff = '(' .. fmt(now - tonumber(ARGV[2]))
local batch = tonumber(ARGV[3])
local gone = redis.call('ZRANGEBYSCORE', K_DEAD_GONE, '-inf', cutoff, 'LIMIT', 0, batch)
for _, dlid in ipairs(gone) do
  redis.call('DEL', dkey(dlid))
  redis.call('ZREM', K_DEAD_ALL, dlid)
  redis.call('ZREM', K_DEAD_GONE, dlid)
end
local n = #gone
local rejected = {}
if n < batch then
  rejected = redis.call('ZRANGEBYSCORE', K_DEAD_REJ, '-inf', cutoff, 'LIMIT', 0, batch - n)
end
local ndead = {}
for _, dlid in ipairs(rejected) do
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'status', 'queue', 'fingerprint')
  if d[1] == 'dead' then
    redis.call('ZREM', K_DEAD_LIVE, dlid)
    redis.call('ZREM', K_APPROVED, dlid)
    if d[3] then
      redis.call('ZREM', fpkey(d[3]), dlid)
      if redis.call('EXISTS', fpkey(d[3])) == 0 then redis.call('SREM', K_DEAD_FPS, d[3]) end
    end
    add_count(ndead, d[2], -1)
  end
  redis.call('DEL', dk)
  redis.call('ZREM', K_DEAD_ALL, dlid)
  redis.call('ZREM', K_DEAD_REJ, dlid)
end
flush_counts(K_NDEAD, ndead)
n = n + #rejected
return {n, n >= batch and 1 or 0}

-- name: prune_batches
-- ARGV: P, older_than seconds, batch -> batches removed: completed longer ago than
-- older_than, with no member row left
local cutoff = '(' .. fmt(server_now() - tonumber(ARGV[2]))
local batch = tonumber(ARGV[3])
local n = 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', K_BDONE, '-inf', cutoff)) do
  if n >= batch then break end
  local r = redis.call('HMGET', bkey(name), 'pending', 'processing', 'done', 'dead',
    'cancelled', 'discarded')
  local left = 0
  for x = 1, 6 do left = left + math.max(tonumber(r[x] or '0') or 0, 0) end
  if left == 0 then
    redis.call('DEL', bkey(name))
    redis.call('ZREM', K_BATCHES, name)
    redis.call('ZREM', K_BDONE, name)
    redis.call('SREM', K_BOPEN, name)
    n = n + 1
  end
end
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

-- name: cancel
-- ARGV: P, 'ids', ids...  or  P, 'filter', task_name, queue, batch ('-' for none, else
-- '+' .. value) -> {'ok', cancelled ids...} or {'missing', id}.  Only pending tasks (in
-- a home lane, or parked behind a blocked breaker) change: they leave it, status
-- 'cancelled', like done for pruning.
local nowf = fmt(server_now())
local cands = {}  -- {id, head}
if ARGV[2] == 'ids' then
  local ids, seen = {}, {}
  for j = 3, #ARGV do
    if not seen[ARGV[j]] then
      seen[ARGV[j]] = true
      ids[#ids + 1] = ARGV[j]
    end
  end
  local heads = hmget_many(col('head'), ids)
  for j, id in ipairs(ids) do
    if not heads[j] then return {'missing', id} end
    cands[#cands + 1] = {id, heads[j]}
  end
else
  local name = ARGV[3] ~= '-' and string.sub(ARGV[3], 2) or false
  local queue = ARGV[4] ~= '-' and string.sub(ARGV[4], 2) or false
  local batch = ARGV[5] ~= '-' and string.sub(ARGV[5], 2) or false
  local seen = {}
  local function scan(key)
    local ms = redis.call('ZRANGE', key, 0, -1)
    local ids = {}
    for x, m in ipairs(ms) do ids[x] = unpad(m) end
    local heads = hmget_many(col('head'), ids)
    local bs = batch and hmget_many(col('batch'), ids) or {}
    for x, id in ipairs(ids) do
      local h = heads[x]
      if h and not seen[id] and (not batch or bs[x] == batch) then
        local _, _, tname = split_head(h)
        if not name or tname == name then
          seen[id] = true
          cands[#cands + 1] = {id, h}
        end
      end
    end
  end
  local qs = queue and {queue} or redis.call('SMEMBERS', K_ACTIVE)
  table.sort(qs)
  for _, q in ipairs(qs) do
    for _, p in ipairs(redis.call('ZRANGE', prio_key(q), 0, -1)) do scan(pend_key(q, p)) end
  end
  for _, rk in ipairs(redis.call('SMEMBERS', K_RKEYS)) do  -- rate keys' lanes
    for _, m in ipairs(redis.call('SMEMBERS', rlanes_key(rk))) do
      local p, q = string.match(m, '^([^:]*):(.*)$')
      if not queue or q == queue then scan(rpend_key(rk, q, p)) end
    end
  end
  for _, b in ipairs(redis.call('SMEMBERS', K_BLOCKED)) do  -- parked tasks
    for _, q in ipairs(redis.call('SMEMBERS', bkq_key(b))) do
      if not queue or q == queue then scan(bk_key(b, q)) end
    end
  end
  table.sort(cands, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
end
local out = {'ok'}
local ncanc = {}
local touched = {}
local cids, cheads = {}, {}
local heads = {}
local ids = {}
for x, c in ipairs(cands) do
  ids[x] = c[1]
  heads[x] = c[2]
end
local bs, rs = keys_for(ids, heads)
for x, c in ipairs(cands) do
  local id, h = c[1], c[2]
  local q, prio = head_qp(h)
  local b, rk = bs[x], rs[x]
  local gone
  if rk then
    gone = redis.call('ZREM', rpend_key(rk, q, prio), pad(id)) == 1
    if gone then rtidy(rk, q, prio) end
  else
    gone = redis.call('ZREM', pend_key(q, prio), pad(id)) == 1
    if gone then touched[q .. '\0' .. prio] = {q, prio} end
  end
  if b and redis.call('ZREM', bk_key(b, q), pad(id)) == 1 then
    gone = true
    btidy(b, q)
  end
  if gone then
    set(id, 'status', 'cancelled')
    set(id, 'updated', nowf)
    if has_ukey(h) then release_unique(redis.call('HGET', col('unique_key'), id), id) end
    add_count(ncanc, q, 1)
    cids[#cids + 1] = id
    cheads[#cids] = h
    out[#out + 1] = id
  end
end
for _, qp in pairs(touched) do tidy(qp[1], qp[2]) end
if #cids > 0 then bulk('RPUSH', K_DONE, cids) end
move(cids, cheads, 'pending', 'cancelled')
flush()
flush_counts(K_NCANC, ncanc)
flush_batches(nowf)
return out

-- name: pause
-- ARGV: P, queue, '1' (pause) or '0' (resume)
if ARGV[3] == '1' then
  redis.call('HSETNX', K_PAUSED, ARGV[2], fmt(server_now()))
elseif redis.call('HDEL', K_PAUSED, ARGV[2]) == 1 then
  redis.call('PUBLISH', CHANNEL, '1')  -- its tasks are claimable again
end
return 1

-- name: settle_batches
-- ARGV: P, created -> JSON [[name, follow-up id or null], ...]: every open batch with no
-- member pending or processing is completed, its on_complete task enqueued
local open = redis.call('SMEMBERS', K_BOPEN)
if #open == 0 then return '[]' end
local now = server_now()
local nowf = fmt(now)
local out = {}
for _, name in ipairs(open) do
  local k = bkey(name)
  local r = redis.call('HMGET', k, 'pending', 'processing', 'on_complete_task',
    'on_complete_payload', 'on_complete_queue', 'completed')
  if r[6] then
    redis.call('SREM', K_BOPEN, name)
  elseif (tonumber(r[1] or '0') or 0) <= 0 and (tonumber(r[2] or '0') or 0) <= 0 then
    local fid = NULL
    if r[3] then
      local q = r[5] or 'default'
      fid = string.format('%d', redis.call('INCR', K_IDS))
      set(fid, 'head', make_head(q, '0', r[3], '', false, false))
      set(fid, 'payload', r[4] or '{}')
      set(fid, 'next_run', nowf)
      set(fid, 'created', ARGV[2])
      set(fid, 'updated', nowf)
      redis.call('SADD', K_QUEUES, q)
      make_pending(fid, q, '0', nowf)
      redis.call('HSET', k, 'followup_id', fid)
    end
    redis.call('HSET', k, 'completed', nowf)
    redis.call('SREM', K_BOPEN, name)
    redis.call('ZADD', K_BDONE, nowf, name)
    out[#out + 1] = {name, fid}
  end
end
if #out == 0 then return '[]' end
flush()
flush_pending()
redis.call('PUBLISH', CHANNEL, '1')
return cjson.encode(out)

-- name: requeue_dead
-- ARGV: P, payload ('-' or '+' .. JSON), delay, spread, then the selection (see
-- select_dead) -> {'ok', task ids...} or {'missing', dead id}
-- include: lib_dead
local now = server_now()
local payload = ARGV[2] ~= '-' and string.sub(ARGV[2], 2) or false
local delay, spread = tonumber(ARGV[3]), tonumber(ARGV[4])
local sel, missing = select_dead(5)
if not sel then return {'missing', missing} end
local out = {'ok'}
local n = #sel
for i, dlid in ipairs(sel) do
  local due = now + delay + spread * (i - 1) / n
  out[#out + 1] = requeue_one(dlid, fmt(due), fmt(now), payload)
end
finish_dead(fmt(now))
if n > 0 and delay <= 0 then redis.call('PUBLISH', CHANNEL, '1') end
return out

-- name: requeue_approved
-- ARGV: P, limit -> task ids re-queued: approved letters whose requeue_at has come
-- include: lib_dead
local nowf = fmt(server_now())
local sel = redis.call('ZRANGEBYSCORE', K_APPROVED, '-inf', nowf, 'LIMIT', 0,
  tonumber(ARGV[2]))
local out = {}
for _, dlid in ipairs(sel) do
  local r = redis.call('HMGET', dkey(dlid), 'status', 'review')
  if r[1] == 'dead' and r[2] == 'approved' then
    out[#out + 1] = requeue_one(dlid, nowf, nowf, false)
  else
    redis.call('ZREM', K_APPROVED, dlid)
  end
end
finish_dead(nowf)
if #out > 0 then redis.call('PUBLISH', CHANNEL, '1') end
return out

-- name: review_dead
-- ARGV: P, '1' (approve) or '0' (reject), by, note ('-' or '+' .. text), after ('' or
-- epoch), rate ('' or per second), then the selection (see select_dead) ->
-- {'ok', count} or {'missing', dead id}
-- include: lib_dead
local now = server_now()
local nowf = fmt(now)
local approve = ARGV[2] == '1'
local note = ARGV[4] ~= '-' and string.sub(ARGV[4], 2) or false
local after = tonumber(ARGV[5]) or now
local rate = tonumber(ARGV[6])
local sel, missing = select_dead(7)
if not sel then return {'missing', missing} end
for i, dlid in ipairs(sel) do
  local dk = dkey(dlid)
  redis.call('HSET', dk, 'review', approve and 'approved' or 'rejected', 'reviewed_by',
    ARGV[3], 'reviewed_at', nowf)
  if note then redis.call('HSET', dk, 'review_note', note) else redis.call('HDEL', dk, 'review_note') end
  if approve then
    local at = after
    if rate and rate > 0 then at = at + (i - 1) / rate end
    redis.call('HSET', dk, 'requeue_at', fmt(at))
    redis.call('ZADD', K_APPROVED, fmt(at), dlid)
    redis.call('ZREM', K_DEAD_REJ, dlid)
  else
    redis.call('HDEL', dk, 'requeue_at')
    redis.call('ZREM', K_APPROVED, dlid)
    redis.call('ZADD', K_DEAD_REJ, nowf, dlid)
  end
end
return {'ok', #sel}

-- name: discard_dead
-- ARGV: P, the selection (see select_dead).  -> {'ok', count} or {'missing', dead id}
-- include: lib_dead
local nowf = fmt(server_now())
local sel, missing = select_dead(2)
if not sel then return {'missing', missing} end
for _, dlid in ipairs(sel) do
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'task_id', 'queue', 'fingerprint')
  redis.call('HSET', dk, 'status', 'discarded', 'discarded_at', nowf)
  unlive(dlid, d[2], d[3], nowf)
  local id = d[1]
  if redis.call('HGET', col('status'), id) == 'dead' then
    redis.call('HSET', col('status'), id, 'discarded')
    redis.call('HSET', col('updated'), id, nowf)
    local b = redis.call('HGET', col('batch'), id)
    if b then
      bump(b, 'dead', -1)
      bump(b, 'discarded', 1)
    end
  end
end
finish_dead(nowf)
return {'ok', #sel}

-- name: dead_groups
-- ARGV: P, fingerprints... (none: every one) -> JSON [[fingerprint, count, task_name,
-- example error, example id, first died_at, last died_at], ...] for the live letters
local fps = {}
for j = 2, #ARGV do fps[#fps + 1] = ARGV[j] end
if #fps == 0 then fps = redis.call('SMEMBERS', K_DEAD_FPS) end
local out = {}
for _, fp in ipairs(fps) do
  local k = fpkey(fp)
  local n = redis.call('ZCARD', k)
  if n > 0 then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
    local d = redis.call('HMGET', dkey(last[1]), 'task_name', 'error')
    out[#out + 1] = {fp, n, d[1] or '', d[2] or '', last[1], first[2], last[2]}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)

-- name: migrate
-- ARGV: P, version -> {applied (0/1), version now stored}.  A prefix of schema 1 (before
-- batches and reviews) is upgraded by the backend first (migrate_2 in chunks), then its
-- version is written here.
local v = redis.call('HGET', K_META, 'schema_version')
if not v or tonumber(v) < tonumber(ARGV[2]) then
  redis.call('HSET', K_META, 'schema_version', ARGV[2])
  return {1, ARGV[2]}
end
return {0, v}

-- name: migrate_2
-- ARGV: P, start, count -> letters read: indexes schema 1 lacks for the dead letters
-- ranked start .. start+count-1 in dead_all (the fingerprint groups of live letters, the
-- re-queued/discarded ones by when, for pruning)
local ids = redis.call('ZRANGE', K_DEAD_ALL, tonumber(ARGV[2]),
  tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
for _, dlid in ipairs(ids) do
  local d = redis.call('HMGET', dkey(dlid), 'status', 'fingerprint', 'died_at',
    'requeued_at', 'discarded_at')
  if d[1] == 'dead' then
    local fp = d[2] or ''
    redis.call('ZADD', fpkey(fp), d[3] or '0', dlid)
    redis.call('SADD', K_DEAD_FPS, fp)
  elseif d[1] == 'requeued' or d[1] == 'discarded' then
    redis.call('ZADD', K_DEAD_GONE, d[4] or d[5] or d[3] or '0', dlid)
  end
end
return #ids

-- name: rate_keys_ready
-- ARGV: P, nq, queues..., [ne, excluded queues...] -> {rate key, seconds until its
-- earliest pending task is due ('0.000000' if one is), that task's name, ...}: the 100
-- soonest keys (parked tasks are in no lane, so a key only they have is left out).
-- Expired leases are rescued first, as by a claim, so their tasks count.
local now = server_now()
rescue(now, fmt(now))
local qs, nxt = read_queues(2)
local qset = as_set(qs)
local skip = false
if ARGV[nxt] then skip = as_set(read_queues(nxt)) end
local found = {}
for _, rk in ipairs(redis.call('SMEMBERS', K_RKEYS)) do
  local best, bm = false, false
  for _, m in ipairs(redis.call('SMEMBERS', rlanes_key(rk))) do
    local p, q = string.match(m, '^([^:]*):(.*)$')
    if wanted(q, qset, skip) then
      local r = redis.call('ZRANGE', rpend_key(rk, q, p), 0, 0, 'WITHSCORES')
      if #r > 0 then
        local s = tonumber(r[2])
        if not best or s < best or (s == best and r[1] < bm) then best, bm = s, r[1] end
      end
    end
  end
  if best then found[#found + 1] = {rk, best, bm} end
end
table.sort(found, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local out = {}
for i = 1, math.min(#found, 100) do
  local f = found[i]
  local h = redis.call('HGET', col('head'), unpad(f[3]))
  local name = ''
  if h then
    local _, _, n = split_head(h)
    name = n
  end
  out[#out + 1] = f[1]
  out[#out + 1] = fmt(math.max(0, f[2] - now))
  out[#out + 1] = name
end
return out

-- name: get_rows
-- ARGV: P, family (breaker, ratelimit, schedule), names... (none: every one) ->
-- {{name, {field, value, ...}}, ...} for the rows that exist
-- include: lib_rows
local names = {}
for j = 3, #ARGV do names[#names + 1] = ARGV[j] end
if #names == 0 then names = redis.call('SMEMBERS', row_index(ARGV[2])) end
local out = {}
for _, name in ipairs(names) do
  local h = redis.call('HGETALL', row_key(ARGV[2], name))
  if #h > 0 then out[#out + 1] = {name, h} end
end
return out

-- name: put_row
-- ARGV: P, family (ratelimit, schedule), name, expected version, JSON [field, value,
-- ...] -> 1 when stored (compare-and-set on version), 0 when the version differed
-- include: lib_rows
return cas_row(ARGV[2], ARGV[3], ARGV[4], cjson.decode(ARGV[5])) and 1 or 0

-- name: delete_row
-- ARGV: P, family (ratelimit, schedule), name -> 1 when there was a row
-- include: lib_rows
redis.call('SREM', row_index(ARGV[2]), ARGV[3])
return redis.call('DEL', row_key(ARGV[2], ARGV[3]))

-- name: put_breaker
-- ARGV: P, name, expected version, state, JSON [field, value, ...] -> 1 when stored, 0
-- when the version differed.  Keeps K_BLOCKED: a breaker that leaves closed parks its
-- pending tasks (out of their home lanes), one that closes puts them back.
-- include: lib_rows
-- include: lib_breakers
local name = ARGV[2]
if not cas_row('breaker', name, ARGV[3], cjson.decode(ARGV[5])) then return 0 end
set_blocked(name, ARGV[4] ~= 'closed')
return 1

-- name: delete_breaker
-- ARGV: P, name -> 1 when there was a row (its parked tasks go back: no row = closed)
-- include: lib_rows
-- include: lib_breakers
local name = ARGV[2]
redis.call('SREM', row_index('breaker'), name)
local n = redis.call('DEL', row_key('breaker', name))
set_blocked(name, false)
return n

-- name: fire_schedule
-- ARGV: P, name, expected version, created, JSON [field, value, ...], JSON list of
-- NewTask tuples (see enqueue_tasks) -> "id,id,..." or false (nothing enqueued) when
-- the stored version differed
-- include: lib_rows
-- include: lib_enqueue
local name = ARGV[2]
if not cas_row('schedule', name, ARGV[3], cjson.decode(ARGV[5])) then return false end
local tasks = cjson.decode(ARGV[6])
if #tasks == 0 then return '' end
local now = server_now()
local out, ready = enqueue_tasks(now, fmt(now), ARGV[4], tasks)
-- the last task the tick enqueued, in the same script (no version step)
redis.call('HSET', row_key('schedule', name), 'last_task_id', out[#out])
if ready then redis.call('PUBLISH', CHANNEL, '1') end
return table.concat(out, ',')

-- name: lib_rows
-- breaker, rate-limit and schedule rows: one hash each, and a set of the names
local function row_key(family, name) return P .. 'queue:' .. family .. ':' .. name end
local function row_index(family) return P .. 'queue:' .. family .. 's' end
-- store `fields` (a flat list) as the row if its stored version is `expected` (0: no
-- row yet); returns whether it did
local function cas_row(family, name, expected, fields)
  local k = row_key(family, name)
  local v = tonumber(redis.call('HGET', k, 'version') or '0')
  if v ~= tonumber(expected) then return false end
  redis.call('DEL', k)
  bulk('HSET', k, fields)
  redis.call('SADD', row_index(family), name)
  return true
end

-- name: lib_breakers
-- a breaker becomes blocked (its pending tasks leave their home lanes: parked in its
-- zsets only) or unblocked (back into their home lanes, a wake-up sent)
local function set_blocked(b, on)
  local was = redis.call('SISMEMBER', K_BLOCKED, b) == 1
  if on == was then return end
  if on then redis.call('SADD', K_BLOCKED, b) else redis.call('SREM', K_BLOCKED, b) end
  local any = false
  for _, q in ipairs(redis.call('SMEMBERS', bkq_key(b))) do
    local r = redis.call('ZRANGE', bk_key(b, q), 0, -1, 'WITHSCORES')
    local ids, scores = {}, {}
    for j = 1, #r, 2 do
      ids[#ids + 1] = unpad(r[j])
      scores[#scores + 1] = r[j + 1]
    end
    local heads = hmget_many(col('head'), ids)
    local _, rs = keys_for(ids, heads)
    for x, id in ipairs(ids) do
      local h = heads[x]
      if h then
        local _, prio = head_qp(h)
        if on then
          home_zrem(id, q, prio, rs[x])
        elseif rs[x] then
          rmake_pending(id, rs[x], q, prio, scores[x])
        else
          make_pending(id, q, prio, scores[x])
        end
        any = true
      end
    end
  end
  flush_zrem()
  flush_pending()
  if any and not on then redis.call('PUBLISH', CHANNEL, '1') end
end

-- name: lib_dead
-- dead-letter helpers, included by the scripts that change dead letters

local ndead = {}

-- the selection at ARGV[i]: 'ids' then ids, or 'filter' then task_name, queue and
-- fingerprint ('-' for none, else '+' .. value).  Returns the live (status 'dead') letter
-- ids, oldest death first, or nil and the id that is not a live dead letter.
local function select_dead(i)
  local sel, seen = {}, {}
  local died = {}
  if ARGV[i] == 'ids' then
    for j = i + 1, #ARGV do
      local dlid = ARGV[j]
      local r = redis.call('HMGET', dkey(dlid), 'status', 'died_at')
      if r[1] ~= 'dead' then return nil, dlid end
      if not seen[dlid] then
        seen[dlid] = true
        sel[#sel + 1] = dlid
        died[dlid] = tonumber(r[2]) or 0
      end
    end
  else
    local name = ARGV[i + 1] ~= '-' and string.sub(ARGV[i + 1], 2) or false
    local queue = ARGV[i + 2] ~= '-' and string.sub(ARGV[i + 2], 2) or false
    local fp = ARGV[i + 3] and ARGV[i + 3] ~= '-' and string.sub(ARGV[i + 3], 2) or false
    local src = fp and fpkey(fp) or K_DEAD_LIVE
    for _, dlid in ipairs(redis.call('ZRANGE', src, 0, -1)) do
      local r = redis.call('HMGET', dkey(dlid), 'task_name', 'queue', 'status', 'died_at',
        'fingerprint')
      if r[3] == 'dead' and (not name or r[1] == name) and (not queue or r[2] == queue)
        and (not fp or r[5] == fp) then
        sel[#sel + 1] = dlid
        died[dlid] = tonumber(r[4]) or 0
      end
    end
  end
  table.sort(sel, function(a, b)
    if died[a] ~= died[b] then return died[a] < died[b] end
    return tonumber(a) < tonumber(b)
  end)
  return sel
end

-- a letter leaves status 'dead' (re-queued or discarded at `at`): out of the live,
-- fingerprint, approved and rejected indexes, into the pruning one
local function unlive(dlid, q, fp, at)
  redis.call('ZREM', K_DEAD_LIVE, dlid)
  if fp then
    redis.call('ZREM', fpkey(fp), dlid)
    if redis.call('EXISTS', fpkey(fp)) == 0 then redis.call('SREM', K_DEAD_FPS, fp) end
  end
  redis.call('ZREM', K_APPROVED, dlid)
  redis.call('ZREM', K_DEAD_REJ, dlid)
  redis.call('ZADD', K_DEAD_GONE, at, dlid)
  add_count(ndead, q, -1)
end

-- put one live letter's task back as pending, due at `due`; returns the task id
local function requeue_one(dlid, due, nowf, payload)
  local dk = dkey(dlid)
  local d = redis.call('HMGET', dk, 'task_id', 'queue', 'task_name', 'payload', 'priority',
    'max_attempts', 'created', 'errors', 'unique_key', 'fingerprint', 'batch', 'breaker',
    'rate_key')
  local id, q, prio = d[1], d[2], d[5]
  redis.call('HSET', dk, 'status', 'requeued', 'requeued_at', nowf)
  unlive(dlid, q, d[10], nowf)
  local ukey = d[9]
  if ukey and redis.call('HEXISTS', K_UNIQUE, ukey) == 1 then ukey = false end
  local head = redis.call('HGET', col('head'), id)
  local cur = redis.call('HGET', col('status'), id)
  local batch = redis.call('HGET', col('batch'), id) or d[11]
  local brk = redis.call('HGET', col('breaker'), id) or d[12] or false
  local rk = redis.call('HGET', col('rate_key'), id) or d[13] or false
  local revive = true
  if not head then  -- its row is gone (deleted by hand): write it again
    set(id, 'head', make_head(q, prio, d[3], d[6] or '', ukey, batch, brk, rk))
    if brk then set(id, 'breaker', brk) end
    if rk then set(id, 'rate_key', rk) end
    set(id, 'payload', d[4] or '{}')
    set(id, 'created', d[7] or '')
    set(id, 'errors', d[8] or '[]')
    if batch then set(id, 'batch', batch) end
  elseif cur == 'dead' or cur == 'discarded' then
    local _, _, name, maxa = split_head(head)
    set(id, 'head', make_head(q, prio, name, maxa, ukey, batch, brk, rk))
    if batch then bump(batch, cur, -1) end
  else
    revive = false  -- already live again some other way
  end
  if revive then
    if payload then set(id, 'payload', payload) end
    set(id, 'status', 'pending')
    set(id, 'attempts', '0')
    set(id, 'next_run', due)
    set(id, 'updated', nowf)
    set(id, 'dead_letter_id', dlid)
    if ukey then
      set(id, 'unique_key', ukey)
      redis.call('HSET', K_UNIQUE, ukey, id)
    else
      redis.call('HDEL', col('unique_key'), id)
    end
    place(id, q, prio, due, brk, rk)
    if batch then bump(batch, 'pending', 1) end
  end
  flush()
  return id
end

local function finish_dead(nowf)
  flush_pending()
  flush_counts(K_NDEAD, ndead)
  flush_batches(nowf)
end

-- name: lib_enqueue
-- insert models.NewTask tuples [name, payload, queue, priority, max_attempts|null,
-- run_at|null (epoch), delay, unique_key|null, batch|null, breaker|null,
-- rate_key|null] (a unique key already pending/processing gives the existing id) ->
-- the ids in order, and whether one is claimable now
local function enqueue_tasks(now, nowf, created, tasks)
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
    local q, ukey, b = t[3], t[8], t[9]
    local brk, rk = t[10], t[11]
    local existing = false
    if ukey ~= NULL then existing = redis.call('HGET', K_UNIQUE, ukey) else ukey = false end
    if b == nil or b == NULL then b = false end
    if brk == nil or brk == NULL then brk = false end
    if rk == nil or rk == NULL then rk = false end
    if existing then
      out[i] = existing
    else
      local id = string.format('%d', base + i)
      local prio = string.format('%d', t[4])
      local nr = now
      if t[6] ~= NULL then nr = t[6] end
      nr = nr + t[7]
      local nrs = fmt(nr)
      local maxa = ''
      if t[5] ~= NULL then maxa = string.format('%d', t[5]) end
      c_head[m + 1] = id
      c_head[m + 2] = make_head(q, prio, t[1], maxa, ukey, b, brk, rk)
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
      if b then
        set(id, 'batch', b)
        bump(b, 'pending', 1)
      end
      if not queues[q] then
        queues[q] = true
        redis.call('SADD', K_QUEUES, q)
      end
      if brk or rk then
        if brk then set(id, 'breaker', brk) end
        if rk then set(id, 'rate_key', rk) end
        if place(id, q, prio, nrs, brk, rk) and nr <= now then ready = true end
      else
        make_pending(id, q, prio, nrs)
        if nr <= now then ready = true end
      end
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
  flush_batches(nowf)
  return out, ready
end
