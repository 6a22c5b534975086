-- tollgate re-registration of one account's holds and pending charges after Redis lost its
-- state (a new epoch, epoch.lua): what one instance knows of its requests in flight and of its
-- charges settled but not yet committed to Postgres. Idempotent: running it twice, or from
-- several event loops, or after the requests' own settle, registers each hold and charge once.
-- The balance itself (credits, version) is loaded from Postgres by the next admission, as for
-- any account not cached (sync.lua keeps the held and pending fields).
-- KEYS[1] balance hash, KEYS[2] holds zset, KEYS[3] hold amounts hash, KEYS[4] pending hash,
-- KEYS[5] committed zset, KEYS[6] holds-due zset, KEYS[7] the epoch string
-- ARGV: epoch, account, now_ms, n_holds, then n_holds times: request_id, amount, expiry_ms,
--       then per pending charge: request_id, charge
-- Returns the number of holds registered, or the error TGEPOCH when the epoch changed again.
if redis.call('GET', KEYS[7]) ~= ARGV[1] then return redis.error_reply('TGEPOCH') end
local now, nh = tonumber(ARGV[3]), tonumber(ARGV[4])
local held, pending, added, earliest = 0, 0, 0, nil
for p = 5, 4 + 3 * nh, 3 do
  local rid, amount, expiry = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  -- Not if it is there already, or was settled (pending) or committed meanwhile.
  if expiry > now and redis.call('HEXISTS', KEYS[3], rid) == 0 and redis.call('HEXISTS', KEYS[4], rid) == 0
     and not redis.call('ZSCORE', KEYS[5], rid) then
    redis.call('ZADD', KEYS[2], expiry, rid)
    redis.call('HSET', KEYS[3], rid, amount)
    held = held + amount
    added = added + 1
    if not earliest or expiry < earliest then earliest = expiry end
  end
end
for p = 5 + 3 * nh, #ARGV, 2 do
  local rid, charge = ARGV[p], tonumber(ARGV[p + 1])
  if not redis.call('ZSCORE', KEYS[5], rid) and redis.call('HSETNX', KEYS[4], rid, charge) == 1 then
    pending = pending + charge
  end
end
if held > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', held)
  redis.call('ZADD', KEYS[6], 'LT', earliest, ARGV[2])
end
if pending > 0 then redis.call('HINCRBY', KEYS[1], 'pending', pending) end
return added
