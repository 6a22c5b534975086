-- tollgate hold extension: a stream still alive keeps its hold. Moves the expiry of each given
-- hold that still exists (not settled, not expired) to the given time; never shortens one.
-- (The holds-due zset needs no change: its score may only be earlier than the real expiry.)
-- KEYS[1] holds zset, KEYS[2] hold amounts hash
-- ARGV: per hold: request_id, new expiry_ms
-- Returns the number of holds extended.
local n = 0
for p = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[p]) == 1 then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', ARGV[p + 1], ARGV[p])
  end
end
return n
