-- tokengate quota script: reserve / debit / settle in one round trip, atomically.
--
-- The arithmetic mirrors extproc/quota/meters.py line for line (bucket, sliding, calendar,
-- lease); the shared backend suite holds both to identical answers.
--
-- KEYS[1]  the reservation record   tg:{ns:N}:res:<request id>   (hash)
-- KEYS[2]  the namespace's open set  tg:{ns:N}:open               (zset id -> lease deadline)
-- KEYS[3]  the namespace's instances tg:{ns:N}:inst               (zset instance -> liveness
--          deadline); tg:{ns:N}:inst:<instance> indexes that instance's open reservations
-- KEYS[4..] one key per limit, in the order of the limits
-- Every key carries the namespace hash tag, so all of them live in one Cluster slot. Records
-- and index keys the script names itself (expired or orphaned reservations) share the tag.
--
-- ARGV[1] op: reserve | take | debit | settle | peek   ARGV[2] now override ("" = server TIME)
-- ARGV[3] request id                          ARGV[4] lease TTL seconds
-- ARGV[5] the limits, `;`-separated, each 7 `,`-separated values (one argument instead of
--   7 per limit: packing arguments is most of the client's cost per call):
--   kind (B bucket, S sliding, C calendar, L lease), amount, period s, need (settle: the
--   actual amount), calendar start, calendar end, end of the next calendar window
-- ARGV[6] the calling sidecar instance ("" = none: no liveness kept)
-- ARGV[7] its liveness TTL seconds: every call renews it in this namespace
-- ARGV[8] (reserve only, optional) a shared capacity's queue ticket: member;score;hold s
--   (extproc/quota/queue.py); KEYS[4 + n] the queue, KEYS[5 + n] its tickets' holds
--
-- Answer of reserve / debit / peek: ok, worst limit (-1: the limits had room, but not for
-- the tickets ahead), retry after, (used, reset after) per limit, then how many
-- reservations of dead instances this call closed, then (with a ticket) the tickets ahead.
-- settle: 1 when it applied a record, 0 when there was none (settled already).

if redis.replicate_commands then redis.replicate_commands() end

local function fmt(x) return string.format('%.17g', x) end

local op, request_id, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
-- take: a reserve that keeps no record (nothing to settle: windowed limits only)
local keep = op ~= 'take'
if op == 'take' then op = 'reserve' end
local specs = {}
for spec in string.gmatch(ARGV[5], '[^;]+') do
  local f = {}
  for value in string.gmatch(spec, '[^,]+') do f[#f + 1] = value end
  specs[#specs + 1] = f
end
local n = #specs
local member, score, hold
if ARGV[8] and ARGV[8] ~= '' then
  local parts = {}
  for value in string.gmatch(ARGV[8], '[^;]+') do parts[#parts + 1] = value end
  member, score, hold = parts[1], tonumber(parts[2]), tonumber(parts[3])
end
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- bucket ---------------------------------------------------------------------------------
-- `t` only moves forward: a clock stepping back must not refill the same time twice.
local function bucket(key, cap, period)
  local v = redis.call('HMGET', key, 'a', 't')
  local a, t = tonumber(v[1]), tonumber(v[2])
  if not a then return cap, now end
  if now > t then return math.min(cap, a + (now - t) * cap / period), now end
  return a, t
end
local function bucket_store(key, a, t, cap, period)
  redis.call('HSET', key, 'a', fmt(a), 't', fmt(t))
  redis.call('PEXPIRE', key, math.ceil(((cap - a) * period / cap + period) * 1000) + 1000)
end

-- sliding --------------------------------------------------------------------------------
-- field 'i' holds the latest window index seen: a clock stepping back stays in it.
local function sliding(key, period)
  local index = math.floor(now / period)
  local latest = tonumber(redis.call('HGET', key, 'i') or '-1')
  local elapsed = now - index * period
  if latest > index then index, elapsed = latest, 0 end
  for _, field in ipairs(redis.call('HKEYS', key)) do
    local old = tonumber(field)
    if field ~= 'i' and old < index - 1 then redis.call('HDEL', key, field) end
  end
  local cur = tonumber(redis.call('HGET', key, tostring(index)) or '0')
  local prev = tonumber(redis.call('HGET', key, tostring(index - 1)) or '0')
  return index, cur, prev, prev * (1 - elapsed / period) + cur, elapsed
end
local function sliding_retry(cap, period, cur, prev, est, need, elapsed)
  if est + need <= cap + 1e-9 then return nil end
  local window_end = period - elapsed
  if cur + need <= cap and prev > 0 then
    local fraction = 1 - (cap - cur - need) / prev
    return math.max(0, fraction * period - (period - window_end))
  end
  if need > cap or cur == 0 then return window_end end
  return window_end + math.max(0, 1 - (cap - need) / cur) * period
end

-- calendar -------------------------------------------------------------------------------
local function calendar(key, start, stop, next_stop)
  if now >= stop then start, stop = stop, next_stop end
  local v = redis.call('HMGET', key, 's', 'e', 'c')
  local s = tonumber(v[1])
  if s == nil or start > s then
    redis.call('HSET', key, 's', start, 'e', stop, 'c', 0)
    redis.call('PEXPIREAT', key, (stop + 86400) * 1000)
    return start, stop, 0
  end
  return s, tonumber(v[2]), tonumber(v[3])
end

-- leases ---------------------------------------------------------------------------------
local function leases(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  return redis.call('ZCARD', key)
end

-- one limit: used, reset_after, retry_after (nil = fits), and how to take / give ----------
local function inspect(kind, key, cap, period, need, c1, c2, c3)
  if kind == 'B' then
    local a = bucket(key, cap, period)
    local retry = nil
    if need > a + 1e-9 then retry = (need - a) * period / cap end
    return math.max(0, math.ceil(cap - a - 1e-9)), (cap - a) * period / cap, retry
  elseif kind == 'S' then
    local _, cur, prev, est, elapsed = sliding(key, period)
    return math.ceil(est - 1e-9), period - elapsed,
      sliding_retry(cap, period, cur, prev, est, need, elapsed)
  elseif kind == 'C' then
    local _, stop, count = calendar(key, c1, c2, c3)
    local retry = nil
    if count + need > cap then retry = math.max(0, stop - now) end
    return count, math.max(0, stop - now), retry
  end
  local live = leases(key)
  local retry = nil
  if live + 1 > cap then retry = 1.0 end
  return live, 0, retry
end

local function take(kind, key, cap, period, need, c1, c2, c3, deadline)
  if kind == 'B' then
    local a, t = bucket(key, cap, period)
    bucket_store(key, a - need, t, cap, period)
    return 0
  elseif kind == 'S' then
    local index = sliding(key, period)
    redis.call('HINCRBY', key, tostring(index), need)
    redis.call('HSET', key, 'i', index)
    redis.call('PEXPIRE', key, math.ceil(2 * period * 1000) + 1000)
    return index
  elseif kind == 'C' then
    local s = calendar(key, c1, c2, c3)
    redis.call('HINCRBY', key, 'c', need)
    return s
  end
  redis.call('ZADD', key, fmt(deadline), request_id)
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
  return 0
end

local function give(kind, key, cap, period, window, delta, id)
  if kind == 'L' then redis.call('ZREM', key, id); return end
  if delta == 0 then return end
  if kind == 'B' then
    local a, t = bucket(key, cap, period)
    bucket_store(key, math.min(cap, a - delta), t, cap, period)
  elseif kind == 'S' then
    local index = sliding(key, period)
    if (window == index or window == index - 1) and redis.call('HEXISTS', key, tostring(window)) == 1 then
      local count = tonumber(redis.call('HGET', key, tostring(window)))
      redis.call('HSET', key, tostring(window), math.max(0, count + delta))
    end
  elseif redis.call('HGET', key, 's') == tostring(window) then
    local count = tonumber(redis.call('HGET', key, 'c'))
    redis.call('HSET', key, 'c', math.max(0, count + delta))
  end
end

local record_key, open_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local me, instance_ttl = ARGV[6], tonumber(ARGV[7])

-- A reservation record, applied with `actual` amounts (a settle by its owner: the record is
-- deleted). With `actual` nil the reservation ended without its owner's word (its lease ran
-- out, or its owner instance stopped renewing): it may have been billed, so it stays charged
-- as recorded (estimate plus stream debits), its concurrency leases are released, and the
-- record stays, marked, so that a settle still coming from an owner that was only cut off
-- replaces it by the true cost (or, a void, by nothing), once.
local function close(key, id, actual)
  local r = redis.call('HGETALL', key)
  if #r == 0 then return 0 end
  local f = {}
  for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
  if f.x == 'v' or (not actual and f.x == '1') then return 0 end
  for i = 1, tonumber(f.n) do
    local p = 'l' .. i
    local kind, reserved = f[p .. 'd'], tonumber(f[p .. 'a'])
    if actual then
      give(kind, f[p .. 'k'], tonumber(f[p .. 'm']), tonumber(f[p .. 'p']),
        tonumber(f[p .. 'w']), actual[i] - reserved, id)
    elseif kind == 'L' then
      redis.call('ZREM', f[p .. 'k'], id)
    end
  end
  if f.o then redis.call('ZREM', inst_key .. ':' .. f.o, id) end
  if actual then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'x', 1)
  end
  return 1
end

-- Bounded, so that a crashed sidecar's thousands of reservations never make one script
-- block Redis: at most 50 are closed per call by each sweep (MemoryBackend does the same).
local prefix = string.sub(record_key, 1, #record_key - #request_id)

local function sweep_expired()
  local expired = redis.call('ZRANGEBYSCORE', open_key, '-inf', fmt(now), 'LIMIT', 0, 50)
  for _, id in ipairs(expired) do
    close(prefix .. id, id, nil)
    redis.call('ZREM', open_key, id)
  end
end

-- Instances whose liveness ran out: their open reservations in this namespace are closed as
-- above, by whichever sidecar calls first (atomically: this is one script).
local function sweep_dead()
  local closed = 0
  local dead = redis.call('ZRANGEBYSCORE', inst_key, '-inf', fmt(now), 'LIMIT', 0, 8)
  for _, who in ipairs(dead) do
    local index = inst_key .. ':' .. who
    local ids = redis.call('ZRANGE', index, 0, 49 - closed)
    for _, id in ipairs(ids) do
      close(prefix .. id, id, nil)
      redis.call('ZREM', index, id)
      redis.call('ZREM', open_key, id)
    end
    closed = closed + #ids
    if redis.call('EXISTS', index) == 0 then redis.call('ZREM', inst_key, who) end
    if closed >= 50 then break end
  end
  return closed
end

if me ~= '' then redis.call('ZADD', inst_key, fmt(now + instance_ttl), me) end
local recovered = sweep_dead()
sweep_expired()

local function limit_args(i)
  local f = specs[i]
  return f[1], KEYS[3 + i], tonumber(f[2]), tonumber(f[3]),
    tonumber(f[4]), tonumber(f[5]), tonumber(f[6]), tonumber(f[7])
end

-- A settle that finds no record (a retried settle, or the void of a reserve whose answer
-- never came and which has not run yet) leaves a tombstone (x = 'v') for the lease TTL: the
-- reserve, should it still arrive (it sat in a socket while Redis was frozen), takes nothing.
if op == 'settle' then
  local actual = {}
  for i = 1, n do actual[i] = tonumber(specs[i][4]) end
  local done = close(record_key, request_id, actual)
  redis.call('ZREM', open_key, request_id)
  if done == 0 and redis.call('EXISTS', record_key) == 0 then
    redis.call('HSET', record_key, 'x', 'v')
    redis.call('PEXPIRE', record_key, math.ceil(ttl * 1000))
  end
  return done
end

-- A debit for a reservation that already ended (settled, or expired) still counts what
-- is being delivered, but has no record or lease left to grow.
local mark = false
if op ~= 'peek' then mark = redis.call('HGET', record_key, 'x') end
if op == 'reserve' and mark == 'v' then op = 'peek' end  -- settled before it ran: no take
local exists = op == 'reserve' or (mark ~= 'v' and redis.call('EXISTS', record_key) == 1)
local live = op == 'reserve' or (exists and mark ~= '1')

-- reserve / debit: check everything first, then take everything (all or nothing) --------
local used, resets, worst, worst_retry = {}, {}, 0, -1
local room = 1073741824  -- how many requests of this size the limits admit (queue.py)
for i = 1, n do
  local kind, key, cap, period, need, c1, c2, c3 = limit_args(i)
  if op == 'debit' and kind == 'L' then need = 0 end
  local u, reset, retry = inspect(kind, key, cap, period, need, c1, c2, c3)
  used[i], resets[i] = u, reset
  if need > 0 and retry ~= nil and retry > worst_retry then worst, worst_retry = i, retry end
  if need > 0 then room = math.min(room, math.max(0, math.floor((cap - u) / need))) end
end

-- a shared capacity's queue: the tickets whose holders stopped asking leave, then this one
-- may take capacity only if the limits have room for it and for every ticket ahead
local ahead = -1
local queue_key, hold_key = KEYS[4 + n], KEYS[5 + n]
if member and op == 'reserve' then
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', hold_key, '-inf', fmt(now), 'LIMIT', 0, 100)) do
    redis.call('ZREM', queue_key, gone)
    redis.call('ZREM', hold_key, gone)
  end
  ahead = redis.call('ZCOUNT', queue_key, '-inf', '(' .. fmt(score))
  if worst == 0 and ahead >= room then worst, worst_retry = -1, 0 end
  if worst ~= 0 then
    redis.call('ZADD', queue_key, fmt(score), member)
    redis.call('ZADD', hold_key, fmt(now + hold), member)
    redis.call('PEXPIRE', queue_key, math.ceil((hold + 60) * 1000))
    redis.call('PEXPIRE', hold_key, math.ceil((hold + 60) * 1000))
  else
    redis.call('ZREM', queue_key, member)
    redis.call('ZREM', hold_key, member)
  end
end

local out = {0, worst, fmt(worst_retry)}
if worst ~= 0 or op == 'peek' then  -- peek: the states only, nothing taken (control API)
  if op == 'peek' then out[1] = 1 end
  for i = 1, n do out[#out + 1] = used[i]; out[#out + 1] = fmt(resets[i]) end
  out[#out + 1] = recovered
  out[#out + 1] = ahead
  return out
end
local deadline = now + ttl
for i = 1, n do
  local kind, key, cap, period, need, c1, c2, c3 = limit_args(i)
  local p = 'l' .. i
  if op == 'reserve' then
    local window = 0
    -- the window is recorded even for a zero need: a stream's debit may fill it later
    if kind ~= 'B' or need > 0 then window = take(kind, key, cap, period, need, c1, c2, c3, deadline) end
    if keep then
      redis.call('HSET', record_key, p .. 'k', key, p .. 'd', kind, p .. 'm', cap, p .. 'p', period,
        p .. 'w', window, p .. 'a', need)
    end
  elseif kind == 'L' then
    if live then
      redis.call('ZADD', key, 'XX', fmt(deadline), request_id)
      redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
    end
  elseif need > 0 then
    take(kind, key, cap, period, need, c1, c2, c3, deadline)
    -- an expired record still learns it, so that its late settle stays exact
    if exists then redis.call('HINCRBY', record_key, p .. 'a', need) end
  end
  local u, reset = inspect(kind, key, cap, period, 0, c1, c2, c3)
  out[#out + 1] = u; out[#out + 1] = fmt(reset)
end
if live and keep then
  redis.call('HSET', record_key, 'n', n)
  redis.call('PEXPIRE', record_key, math.ceil(ttl * 1000) + 86400000)
  redis.call('ZADD', open_key, fmt(deadline), request_id)
end
if op == 'reserve' and me ~= '' and keep then  -- the reservation belongs to this instance
  redis.call('HSET', record_key, 'o', me)
  redis.call('ZADD', inst_key .. ':' .. me, fmt(now), request_id)
  redis.call('PEXPIRE', inst_key, math.ceil((ttl + instance_ttl) * 1000) + 86400000)
end
out[1] = 1
out[#out + 1] = recovered
out[#out + 1] = ahead
return out
