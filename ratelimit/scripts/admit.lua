-- tollgate admission: for each request of one account, in order, every sliding window of the
-- request, then the balance hold — atomically, in one round trip for the whole batch (the
-- requests of one event-loop turn). See ratelimit/admission.hpp for the algorithm and its bound.
-- A batch decides exactly as the same requests sent one by one at the same time would.
--
-- KEYS[1] balance hash {credits, version, held, pending}   (credit units, 1e-6 USD)
-- KEYS[2] holds zset   request_id -> expiry (ms)
-- KEYS[3] hold amounts hash request_id -> amount
-- KEYS[4] released zset request_id -> when (settle.lua: admissions answered 503, released)
-- KEYS[5] the Redis epoch string (epoch.lua), KEYS[6] the holds-due zset account -> earliest
--         expiry of its holds (sweep.lua)
-- KEYS[6+j] window j hash {t = total, o = oldest live bucket, <bucket index> = count}; a spend
--         limit's window (buckets = 0) is one calendar period: {t = total, 0 = the same}, made
--         by spend_seed.lua from Postgres (until then: status 5)
-- ARGV: now_ms, hold_ttl_ms, epoch, account, n_windows, then per window j: window_ms, buckets
--       (a spend window: its period's end in Unix ms, 0 = never ends; and 0),
--       then per request: request_id, hold, overdraft, m, then m times: window j, limit, cost
-- Returns one array per request: {status, detail, retry_after_ms, then per window of the
-- request: remaining, reset_ms, bucket}
--   status 0 admitted (detail = available after the hold) | 1 rate limited (detail = index of
--          the window among the request's) | 2 insufficient balance (detail = available) |
--          3 balance not cached | 4 released already (its instance answered 503 and released
--          it by request id before this ran: no hold) | 5 a spend window not seeded (detail =
--          the index of the window among the request's)
-- or the error "TGEPOCH <epoch>" (nothing done) when the Redis epoch is not the caller's: Redis
-- lost its state (restart without persistence, FLUSHALL, failover) or the caller has not yet
-- re-registered its holds under this epoch.
if redis.call('GET', KEYS[5]) ~= ARGV[3] then
  return redis.error_reply('TGEPOCH ' .. (redis.call('GET', KEYS[5]) or ''))
end
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local account = ARGV[4]
local nwin = tonumber(ARGV[5])
local released = redis.call('EXISTS', KEYS[4]) == 1

local wins = {}
for j = 1, nwin do
  local a = 5 + (j - 1) * 2
  local w = {key = KEYS[6 + j], win = tonumber(ARGV[a + 1]), nb = tonumber(ARGV[a + 2]), added = 0, counts = {}}
  if w.nb == 0 then
    -- A spend limit's calendar period: one bucket (0) and its total; none before it is seeded.
    local t = redis.call('HGET', w.key, 't')
    w.period, w.seeded, w.total, w.cur, w.oldest = true, t ~= false, tonumber(t) or 0, 0, 0
    wins[j] = w
  else
  w.g = math.floor(w.win / w.nb)
  w.cur = math.floor(now / w.g)
  local lo = w.cur - w.nb            -- buckets lo..cur are counted (nb + 1 of them)
  local h = redis.call('HMGET', w.key, 't', 'o')
  w.total = tonumber(h[1]) or 0
  -- No bucket is older than 'o'; a window without it has no buckets at all (admission writes
  -- 'o' whenever it adds one), so its oldest possible bucket is the current one.
  local oldest = tonumber(h[2]) or w.cur
  if oldest < lo then
    if lo - oldest > w.nb then       -- idle for longer than the window: nothing is live
      redis.call('DEL', w.key)
      w.total = 0
      oldest = w.cur
    else
      for b = oldest, lo - 1 do
        local v = redis.call('HGET', w.key, b)
        if v then
          w.total = w.total - tonumber(v)
          redis.call('HDEL', w.key, b)
        end
      end
      oldest = lo
      w.changed = true               -- buckets left the window: 't' and 'o' must follow
    end
  end
  w.oldest = oldest
  wins[j] = w
  end
end

-- A bucket's count, including what this batch added to the current one.
local function count(w, b)
  local c = w.counts[b]
  if c == nil then
    c = tonumber(redis.call('HGET', w.key, b)) or 0
    w.counts[b] = c
  end
  if b == w.cur then return c + w.added end
  return c
end

-- When enough of the oldest buckets leave the window for `cost` to fit (never, if cost > limit).
local function retry_after(w, limit, cost)
  if w.period then return w.win > 0 and w.win - now or 0 end  -- when the period ends
  if cost > limit then return w.win end
  local need, freed = w.total + cost - limit, 0
  for b = w.oldest, w.cur do
    freed = freed + count(w, b)
    if freed >= need then return (b + w.nb + 1) * w.g - now end
  end
  return w.win
end

local b = redis.call('HMGET', KEYS[1], 'credits', 'held', 'pending')
local cached = b[1] ~= false
local credits, held, pending = tonumber(b[1]) or 0, tonumber(b[2]) or 0, tonumber(b[3]) or 0
local held_changed = false
if cached then
  -- Holds of crashed or stuck requests expire.
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, r in ipairs(expired) do
    local amt = redis.call('HGET', KEYS[3], r)
    if amt then
      held = held - tonumber(amt)
      redis.call('HDEL', KEYS[3], r)
      held_changed = true
    end
    redis.call('ZREM', KEYS[2], r)
  end
end

local out, hold_scores, hold_amounts = {}, {}, {}
local i = 6 + 2 * nwin
while i <= #ARGV do
  local rid, hold, overdraft, m = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local rw = {}
  for k = 1, m do
    local p = i + 4 + (k - 1) * 3
    rw[k] = {w = wins[tonumber(ARGV[p])], limit = tonumber(ARGV[p + 1]), cost = tonumber(ARGV[p + 2])}
  end
  i = i + 4 + 3 * m
  local status, detail, retry = 0, 0, 0
  if released and redis.call('ZSCORE', KEYS[4], rid) then status = 4 end
  for k = 1, status == 0 and m or 0 do
    if rw[k].w.period and not rw[k].w.seeded then
      status, detail = 5, k
      break
    end
  end
  for k = 1, status == 0 and m or 0 do
    local x = rw[k]
    if x.w.total + x.cost > x.limit then
      status, detail, retry = 1, k, retry_after(x.w, x.limit, x.cost)
      break
    end
  end
  if status == 0 then
    local available = credits - held - pending + overdraft
    if not cached then
      status = 3
    elseif hold > available then
      status, detail = 2, available
    else
      held = held + hold
      held_changed = true
      hold_scores[#hold_scores + 1] = now + ttl
      hold_scores[#hold_scores + 1] = rid
      hold_amounts[#hold_amounts + 1] = rid
      hold_amounts[#hold_amounts + 1] = hold
      for k = 1, m do
        rw[k].w.total = rw[k].w.total + rw[k].cost
        rw[k].w.added = rw[k].w.added + rw[k].cost
      end
      detail = available - hold
    end
  end
  local r = {status, detail, retry}
  for k = 1, m do
    local x = rw[k]
    local remaining = x.limit - x.w.total
    if remaining < 0 then remaining = 0 end
    r[#r + 1] = remaining
    if x.w.period then
      r[#r + 1] = x.w.win > 0 and x.w.win - now or 0
    else
      r[#r + 1] = (x.w.cur + x.w.nb + 1) * x.w.g - now
    end
    r[#r + 1] = x.w.cur
  end
  out[#out + 1] = r
end

-- Write back what changed: a batch of refusals that expired nothing writes nothing. (A window's
-- expiry need not move then: every bucket in it is younger than the PEXPIRE set when it was
-- added.)
for j = 1, nwin do
  local w = wins[j]
  if w.period then
    if w.added > 0 then
      redis.call('HINCRBY', w.key, 0, w.added)
      redis.call('HINCRBY', w.key, 't', w.added)
    end
  else
  if w.added > 0 then redis.call('HINCRBY', w.key, w.cur, w.added) end
  if w.added > 0 or w.changed then
    redis.call('HSET', w.key, 't', w.total, 'o', w.oldest)
    redis.call('PEXPIRE', w.key, w.win + 2 * w.g)
  end
  end
end
if held_changed then redis.call('HSET', KEYS[1], 'held', held) end
if #hold_scores > 0 then
  redis.call('ZADD', KEYS[2], unpack(hold_scores))
  redis.call('HSET', KEYS[3], unpack(hold_amounts))
  -- The sweep at rest visits the account when its earliest hold may have expired.
  redis.call('ZADD', KEYS[6], 'LT', now + ttl, account)
end
return out
