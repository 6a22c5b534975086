-- tollgate admission: every sliding window of the request, then the balance hold — atomically,
-- in one round trip. See ratelimit/admission.hpp for the algorithm and its bound.
--
-- KEYS[1] balance hash {credits, version, held, pending}   (credit units, 1e-6 USD)
-- KEYS[2] holds zset   request_id -> expiry (ms)
-- KEYS[3] hold amounts hash request_id -> amount
-- KEYS[3+i] window i hash {t = total, o = oldest live bucket, <bucket index> = count}
-- ARGV: now_ms, request_id, hold, hold_ttl_ms, overdraft, n_windows,
--       then per window: limit, window_ms, buckets, cost
-- Returns {status, detail, retry_after_ms, then per window: remaining, reset_ms, bucket}
--   status 0 admitted | 1 rate limited (detail = window index) |
--          2 insufficient balance (detail = available) | 3 balance not cached
local now = tonumber(ARGV[1])
local rid = ARGV[2]
local hold = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local overdraft = tonumber(ARGV[5])
local nwin = tonumber(ARGV[6])

local wins = {}
local limited, retry = 0, 0
for i = 1, nwin do
  local a = 6 + (i - 1) * 4
  local w = {key = KEYS[3 + i], limit = tonumber(ARGV[a + 1]), win = tonumber(ARGV[a + 2]),
             nb = tonumber(ARGV[a + 3]), cost = tonumber(ARGV[a + 4])}
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
  wins[i] = w
  if limited == 0 and w.total + w.cost > w.limit then
    -- Retry when enough of the oldest buckets have left the window (never, if cost > limit).
    local need, freed = w.total + w.cost - w.limit, 0
    retry = w.win
    if w.cost <= w.limit then
      for b = oldest, w.cur do
        freed = freed + (tonumber(redis.call('HGET', w.key, b)) or 0)
        if freed >= need then
          retry = (b + w.nb + 1) * w.g - now
          break
        end
      end
    end
    limited = i
  end
end

-- Writes a window back only if this call changed it: a refusal (rate limit, balance) that
-- expired no bucket writes nothing. (Its expiry need not move: every bucket in it is younger
-- than the PEXPIRE set when it was added.)
local function persist_windows(admit)
  for i = 1, nwin do
    local w = wins[i]
    if admit then
      redis.call('HINCRBY', w.key, w.cur, w.cost)
      w.total = w.total + w.cost
    end
    if admit or w.changed then
      redis.call('HSET', w.key, 't', w.total, 'o', w.oldest)
      redis.call('PEXPIRE', w.key, w.win + 2 * w.g)
    end
  end
end

local function reply(status, detail, retry_ms)
  local out = {status, detail, retry_ms}
  for i = 1, nwin do
    local w = wins[i]
    local remaining = w.limit - w.total
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = (w.cur + w.nb + 1) * w.g - now
    out[#out + 1] = w.cur
  end
  return out
end

if limited > 0 then
  persist_windows(false)
  return reply(1, limited, retry)
end

local b = redis.call('HMGET', KEYS[1], 'credits', 'held', 'pending')
if not b[1] then
  persist_windows(false)
  return reply(3, 0, 0)
end
local held = tonumber(b[2]) or 0
-- Holds of crashed or stuck requests expire.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, r in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[3], r)
  if amt then
    held = held - tonumber(amt)
    redis.call('HDEL', KEYS[3], r)
  end
  redis.call('ZREM', KEYS[2], r)
end
local available = tonumber(b[1]) - held - (tonumber(b[3]) or 0) + overdraft
if hold > available then
  redis.call('HSET', KEYS[1], 'held', held)
  persist_windows(false)
  return reply(2, available, 0)
end
redis.call('HSET', KEYS[1], 'held', held + hold)
redis.call('ZADD', KEYS[2], now + ttl, rid)
redis.call('HSET', KEYS[3], rid, hold)
persist_windows(true)
return reply(0, available - hold, 0)
