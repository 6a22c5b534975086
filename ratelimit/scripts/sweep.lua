-- tollgate sweep at rest: releases one account's expired holds (left by a crashed instance, or
-- by a request whose settle never reached Redis) without waiting for the account's next
-- admission, and records when its earliest remaining hold expires in the holds-due zset (or
-- removes the account from it). Instances call it for the accounts the holds-due zset says are
-- due.
-- KEYS[1] balance hash, KEYS[2] holds zset, KEYS[3] hold amounts hash, KEYS[4] holds-due zset
-- ARGV: account, now_ms
-- Returns the number of holds released.
local now = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local freed = 0
for _, r in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[3], r)
  if amt then
    freed = freed + tonumber(amt)
    redis.call('HDEL', KEYS[3], r)
  end
  redis.call('ZREM', KEYS[2], r)
end
if freed > 0 then redis.call('HINCRBY', KEYS[1], 'held', -freed) end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  redis.call('ZADD', KEYS[4], first[2], ARGV[1])
else
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return #expired
