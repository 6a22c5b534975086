-- tollgate settle, batched: for each request of one account, release its hold, count its real
-- charge as pending (settled in Redis, not yet committed to Postgres), and correct its token
-- windows from the estimate to the usage. One call settles up to a few hundred requests.
-- KEYS[1] balance hash, KEYS[2] holds zset, KEYS[3] hold amounts hash,
-- KEYS[4] pending hash request_id -> charge, KEYS[5] committed zset (sync.lua),
-- KEYS[6] released zset request_id -> when (read by admit.lua),
-- KEYS[6+j] token windows referenced by the entries below
-- ARGV: now_ms, hold_ttl_ms, then per request: request_id, charge, n, then n times: window
--       index j, bucket, delta (delta = real - estimated tokens). A charge of -1 releases an
--       admission its instance answered 503 (Redis did not answer in time): its hold is
--       released if admit.lua placed it, and the request id is remembered for hold_ttl so that
--       an admit.lua still to run (stuck in a stalled Redis' socket) places no hold.
-- Returns the number of requests settled.
-- Idempotent: running a batch twice (a retry after its reply was lost) changes nothing more. A
-- request's hold is released and its token windows corrected only while its hold exists, and
-- its charge is added to pending only once (HSETNX).
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local rids, charges, wins = {}, {}, {}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  rids[#rids + 1] = ARGV[i]
  charges[#charges + 1] = tonumber(ARGV[i + 1])
  wins[#wins + 1] = i + 3
  i = i + 3 + 3 * n
end
if #rids == 0 then return 0 end

local amounts = redis.call('HMGET', KEYS[3], unpack(rids))
local released, held_rids, pending, releases = 0, {}, 0, false
for r = 1, #rids do
  local rid = rids[r]
  if amounts[r] then
    released = released + tonumber(amounts[r])
    held_rids[#held_rids + 1] = rid
  end
  -- If Postgres already committed it (the writer's sync ran first, or this is a retry after the
  -- commit: sync.lua marks every committed request), credits include it already.
  if charges[r] < 0 then
    redis.call('ZADD', KEYS[6], now, rid)
    releases = true
  elseif charges[r] > 0 and not redis.call('ZSCORE', KEYS[5], rid)
     and redis.call('HSETNX', KEYS[4], rid, charges[r]) == 1 then
    pending = pending + charges[r]
  end
  local a = wins[r]
  for k = 1, amounts[r] and tonumber(ARGV[a - 1]) or 0 do
    local p = a + 3 * (k - 1)
    local key, bucket, delta = KEYS[6 + tonumber(ARGV[p])], ARGV[p + 1], tonumber(ARGV[p + 2])
    local v = tonumber(redis.call('HGET', key, bucket))
    if v then                               -- still inside the window
      if delta < -v then delta = -v end
      redis.call('HINCRBY', key, bucket, delta)
      redis.call('HINCRBY', key, 't', delta)
    end
  end
end
if #held_rids > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -released)
  redis.call('HDEL', KEYS[3], unpack(held_rids))
  redis.call('ZREM', KEYS[2], unpack(held_rids))
end
if pending > 0 then redis.call('HINCRBY', KEYS[1], 'pending', pending) end
if releases then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - ttl)
  redis.call('PEXPIRE', KEYS[6], ttl)
end
return #rids
