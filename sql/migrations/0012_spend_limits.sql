-- Spend limits that reset (issue 14, part 2), per API key and per account, like OpenRouter's
-- key budget: at most spend_limit_usd charged in each period; NULL = no limit. Periods are
-- calendar UTC: 'daily' from midnight, 'weekly' from Monday 00:00, 'monthly' from the 1st
-- 00:00; 'never' = one period for ever. Enforced in Redis with admission (the worst case is
-- held against what is left of the period, corrected to the charge at settle).
ALTER TABLE api_keys
  ADD COLUMN spend_limit_usd numeric(18,6) CONSTRAINT api_keys_spend_limit_nonnegative CHECK (spend_limit_usd >= 0),
  ADD COLUMN limit_reset text NOT NULL DEFAULT 'never'
             CONSTRAINT api_keys_limit_reset_known CHECK (limit_reset IN ('daily', 'weekly', 'monthly', 'never'));
ALTER TABLE rate_limits
  ADD COLUMN spend_limit_usd numeric(18,6) CONSTRAINT rate_limits_spend_limit_nonnegative CHECK (spend_limit_usd >= 0),
  ADD COLUMN limit_reset text NOT NULL DEFAULT 'never'
             CONSTRAINT rate_limits_limit_reset_known CHECK (limit_reset IN ('daily', 'weekly', 'monthly', 'never'));

-- The proxy caches a key's limits: a change to them invalidates it on every instance (0002's
-- trigger, now listing the new columns; rate_limits' trigger fires on any change already).
DROP TRIGGER api_keys_notify_update ON api_keys;
CREATE TRIGGER api_keys_notify_update AFTER UPDATE OF key_hash, user_id, is_active, expires_at,
  requests_per_minute, requests_per_hour, requests_per_day, tokens_per_minute,
  max_tokens_per_request, spend_limit_usd, limit_reset ON api_keys
  FOR EACH ROW EXECUTE FUNCTION tollgate_notify_api_key();

-- Seeding a spend window (sql::charged_since) sums what a key or account was charged since its
-- period began: indexes usage_logs_api_key_created_idx (0013) and usage_logs_user_created_idx
-- (0001).

-- The start of the period `reset` that contains `at` (UTC); -infinity for 'never'.
CREATE FUNCTION tollgate_period_start(reset text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT CASE reset
    WHEN 'daily'   THEN date_trunc('day',   at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    WHEN 'weekly'  THEN date_trunc('week',  at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'  -- ISO weeks start on Monday
    WHEN 'monthly' THEN date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    ELSE '-infinity'::timestamptz
  END
$$;
