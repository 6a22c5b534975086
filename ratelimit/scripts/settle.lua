-- tollgate settle: release the request's hold, count its real charge as pending (settled in
-- Redis, not yet committed to Postgres), and correct token windows from estimate to usage.
-- KEYS[1] balance hash, KEYS[2] holds zset, KEYS[3] hold amounts hash,
-- KEYS[4] pending hash request_id -> charge, KEYS[5] committed zset (sync.lua),
-- KEYS[5+i] token window i
-- ARGV: request_id, charge, then per token window: bucket, delta (real - estimated tokens)
local rid = ARGV[1]
local charge = tonumber(ARGV[2])
local amt = redis.call('HGET', KEYS[3], rid)
if amt then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(amt))
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[2], rid)
end
-- If Postgres already committed it (the writer's sync ran first), credits include it already.
if charge > 0 and not redis.call('ZSCORE', KEYS[5], rid) and redis.call('HSETNX', KEYS[4], rid, charge) == 1 then
  redis.call('HINCRBY', KEYS[1], 'pending', charge)
end
for i = 1, #KEYS - 5 do
  local key, bucket, delta = KEYS[5 + i], ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  local v = tonumber(redis.call('HGET', key, bucket))
  if v then                               -- still inside the window
    if delta < -v then delta = -v end
    redis.call('HINCRBY', key, bucket, delta)
    redis.call('HINCRBY', key, 't', delta)
  end
end
return 1
