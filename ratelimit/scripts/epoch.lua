-- tollgate Redis epoch: names the Redis state holds are registered in. Called by an instance
-- that found the epoch missing or changed, and periodically; returns the current epoch, making
-- a new one when
--   * there is none: Redis restarted without persistence, or was flushed (FLUSHALL, FLUSHDB),
--   * it was made under another Redis process (its run_id differs): Redis restarted (even with
--     AOF, `everysec` may have lost the last second of writes) or a replica was promoted (it may
--     lack recent writes).
-- After a new epoch, every instance re-registers the holds of its requests in flight and its
-- charges not yet committed to Postgres (restore.lua) before admitting again (admit.lua refuses
-- a caller whose epoch is not the current one; instances wait `epoch_fence` after the epoch's
-- creation so that all of them have re-registered).
-- KEYS[1] the epoch string "<token>:<created, Redis time in Unix ms>:<run_id>"
-- ARGV[1] a fresh random token
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or 'unknown'
local e = redis.call('GET', KEYS[1])
if e and string.match(e, ':(%x+)$') == run_id then return e end
local t = redis.call('TIME')
local v = ARGV[1] .. ':' .. string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) ..
          ':' .. run_id
redis.call('SET', KEYS[1], v)
return v
