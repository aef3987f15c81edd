-- tokengate backend health: admit / record / view, each in one round trip, atomically.
--
-- Mirrors extproc/backends/memory.py step for step (its docstring gives the order of the
-- checks); the semantics suite holds both to the same answers.
--
-- KEYS  one hash per backend, tg:{health}:<backend>, in the caller's order (record: one).
--       The `{health}` hash tag puts every backend in one Cluster slot, so one call may
--       read all of a request's backends.
-- fields  f failures   o open until   p probe until   (absent: 0, i.e. never)
--         rq, rt remaining requests / tokens   qa, ta their reset times   ra retry-after time
--         (absent: unknown). Times are absolute, in the server's seconds (TIME).
-- A key with nothing to hold is deleted; any other expires ARGV[3] seconds after its last
-- write, or after the latest time it holds if that is later.
--
-- ARGV[1] op: admit | record | view   ARGV[2] now override ("" = server TIME; tests only)
-- ARGV[3] forget after (s)
-- admit:  ARGV[4] tokens  ARGV[5] probe TTL (s)
--         -> verdict, wait per backend (ok | probe | open | exhausted)
-- record: ARGV[4] ok: 1 | 0 | "" (neutral)  ARGV[5] failures that open  ARGV[6] cooldown (s)
--         ARGV[7..11] remaining requests, remaining tokens, requests reset (s),
--         tokens reset (s), retry after (s), each "" when the answer did not say
--         -> transition (none | opened | reopened | closed)
-- view:   -> per backend: state, failures, open for (s), remaining requests,
--         remaining tokens, requests reset (s), tokens reset (s), retry after (s) ("" = unknown)

if redis.replicate_commands then redis.replicate_commands() end

local function fmt(x) return string.format('%.17g', x) end

local op, forget_s = ARGV[1], tonumber(ARGV[3])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local FIELDS = {'f', 'o', 'p', 'rq', 'rt', 'qa', 'ta', 'ra'}

local function load(key)
  local values = redis.call('HMGET', key, unpack(FIELDS))
  local s = {exists = false}
  for i, name in ipairs(FIELDS) do
    if values[i] then
      s[name] = tonumber(values[i])
      s.exists = true
    end
  end
  s.f, s.o, s.p = s.f or 0, s.o or 0, s.p or 0
  return s
end

local function save(key, s)
  redis.call('DEL', key)
  local pairs_, latest = {}, math.max(s.o, s.p)
  if s.f ~= 0 then pairs_[#pairs_ + 1] = 'f'; pairs_[#pairs_ + 1] = fmt(s.f) end
  if s.o ~= 0 then pairs_[#pairs_ + 1] = 'o'; pairs_[#pairs_ + 1] = fmt(s.o) end
  if s.p ~= 0 then pairs_[#pairs_ + 1] = 'p'; pairs_[#pairs_ + 1] = fmt(s.p) end
  for _, name in ipairs({'rq', 'rt', 'qa', 'ta', 'ra'}) do
    if s[name] then pairs_[#pairs_ + 1] = name; pairs_[#pairs_ + 1] = fmt(s[name]) end
  end
  for _, name in ipairs({'qa', 'ta', 'ra'}) do
    if s[name] then latest = math.max(latest, s[name]) end
  end
  if #pairs_ == 0 then return end
  redis.call('HSET', key, unpack(pairs_))
  redis.call('PEXPIRE', key, math.ceil(math.max(forget_s, latest - now) * 1000))
end

-- A remainder whose reset has passed says nothing any more: the provider refilled it.
local function forget_passed(s)
  if s.qa and s.qa <= now then s.rq, s.qa = nil, nil end
  if s.ta and s.ta <= now then s.rt, s.ta = nil, nil end
  if s.ra and s.ra <= now then s.ra = nil end
end

local function from_now(at)
  if at and at > now then return at - now end
  return nil
end

local function verdict(s, tokens)
  local retry = from_now(s.ra)
  if retry then return 'exhausted', retry end
  if s.o > now then return 'open', s.o - now end
  if s.o > 0 and s.p > now then return 'open', s.p - now end
  local wait = from_now(s.qa)
  if wait and s.rq and s.rq <= 0 then return 'exhausted', wait end
  wait = from_now(s.ta)
  if wait and s.rt and s.rt < tokens then return 'exhausted', wait end
  if s.o > 0 then return 'probe', 0 end
  return 'ok', 0
end

local function admit()
  local tokens, probe_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
  local out, claimed = {}, false
  for _, key in ipairs(KEYS) do
    local s = load(key)
    local v, wait = verdict(s, tokens)
    -- A half-open backend behind the first usable one would be a second probe (or one
    -- sent without the slot): only the claimed one may probe, later ones count as open.
    if claimed and v == 'probe' then v, wait = 'open', 0 end
    if not claimed and (v == 'ok' or v == 'probe') then
      claimed = true
      if s.exists then -- nothing known: nothing to claim or count down
        forget_passed(s)
        if v == 'probe' then s.p = now + probe_ttl end
        if s.rq then s.rq = math.max(0, s.rq - 1) end
        if s.rt then s.rt = math.max(0, s.rt - tokens) end
        save(key, s)
      end
    end
    out[#out + 1] = v
    out[#out + 1] = fmt(wait)
  end
  return out
end

local function breaker(s, ok, threshold, cooldown)
  if ok == '' then  -- the request was at fault: an answered probe frees the slot all the same
    s.p = 0
    return 'none'
  end
  local was_open = s.o > 0
  if ok == '1' then
    s.f, s.o, s.p = 0, 0, 0
    if was_open then return 'closed' end
    return 'none'
  end
  s.f = s.f + 1
  if was_open then
    s.o, s.p = now + cooldown, 0
    return 'reopened'
  end
  if s.f >= threshold then
    s.o = now + cooldown
    return 'opened'
  end
  return 'none'
end

local function record()
  local key = KEYS[1]
  local s = load(key)
  forget_passed(s)
  local transition = breaker(s, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
  if ARGV[7] ~= '' then s.rq = tonumber(ARGV[7]) end
  if ARGV[8] ~= '' then s.rt = tonumber(ARGV[8]) end
  if ARGV[9] ~= '' then s.qa = now + tonumber(ARGV[9]) end
  if ARGV[10] ~= '' then s.ta = now + tonumber(ARGV[10]) end
  if ARGV[11] ~= '' then s.ra = now + tonumber(ARGV[11]) end
  save(key, s)
  return transition
end

local function known(remaining, reset_at)
  if remaining == nil or (reset_at and reset_at <= now) then return '' end
  return fmt(remaining)
end

local function opt(x)
  if x == nil then return '' end
  return fmt(x)
end

local function view()
  local out = {}
  for _, key in ipairs(KEYS) do
    local s = load(key)
    local state = 'closed'
    if s.o > now then state = 'open' elseif s.o > 0 then state = 'half-open' end
    local row = {state, fmt(s.f), fmt(math.max(0, s.o - now)), known(s.rq, s.qa),
                 known(s.rt, s.ta), opt(from_now(s.qa)), opt(from_now(s.ta)), opt(from_now(s.ra))}
    for _, value in ipairs(row) do out[#out + 1] = value end
  end
  return out
end

if op == 'admit' then return admit() end
if op == 'record' then return record() end
if op == 'view' then return view() end
return redis.error_reply('unknown op ' .. tostring(op))
