-- tollgate balance sync: Postgres is the authority. A newer (credits, version) replaces the
-- cached one; an older one is ignored, so out-of-order updates never go backwards. The
-- request_ids just committed to Postgres stop counting as pending (their charge is now in
-- credits) — always, whatever the version order.
-- Every committed request is remembered in the committed zset for 10 minutes, whether its
-- settle reached Redis first or not yet, so that a settle arriving after the commit (a late
-- settle, or a retried one whose first attempt already counted it) does not count it again.
-- KEYS[1] balance hash, KEYS[2] pending hash, KEYS[3] committed zset
-- ARGV: credits (credit units), version, now_ms, request_id...
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[2]) > v then
  redis.call('HSET', KEYS[1], 'credits', ARGV[1], 'version', ARGV[2])
end
local now = tonumber(ARGV[3])
for i = 4, #ARGV do
  local c = redis.call('HGET', KEYS[2], ARGV[i])
  if c then
    redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(c))
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
  redis.call('ZADD', KEYS[3], now, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 600000)
return 1
