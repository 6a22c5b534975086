-- tollgate spend_seed: makes a spend limit's window for one calendar period from what Postgres
-- says was charged in it, unless it exists already (another instance seeded it first, or
-- admissions counted in it since: Redis is then the authority for the period).
-- KEYS[1] the window hash {t, 0}; ARGV: charged (credit units), period end (Unix ms, 0 = never)
-- The window lives one day past its period's end (settles of requests admitted in it still
-- correct it), for ever for a limit that never resets.
-- Returns 1 if it seeded the window, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1], '0', ARGV[1])
local period_end = tonumber(ARGV[2])
if period_end > 0 then redis.call('PEXPIREAT', KEYS[1], period_end + 86400000) end
return 1
