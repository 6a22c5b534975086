-- Token counts are bigint (issue 11): no valid usage record is ever refused for its size (an
-- upstream reporting 10^12 tokens used to overflow `integer` and be dead-lettered). tollgate
-- treats such usage as missing (proxy/record.cpp), but the columns no longer set the bound.
-- On a large usage_logs this ALTER rewrites the table: run it in a maintenance window.
ALTER TABLE usage_logs
  ALTER COLUMN prompt_tokens TYPE bigint,
  ALTER COLUMN completion_tokens TYPE bigint,
  ALTER COLUMN total_tokens TYPE bigint;

-- record_usage() as in 0005, reading the token counts as bigint.
CREATE OR REPLACE FUNCTION record_usage(p_batch jsonb)
RETURNS TABLE (account uuid, credits_micros bigint, balance_version bigint, inserted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  accounts uuid[];
  locked integer;
  live_keys uuid[];
BEGIN
  accounts := ARRAY(SELECT DISTINCT (e->>'user_id')::uuid FROM jsonb_array_elements(p_batch) e ORDER BY 1);
  -- Every account has a balance row, locked in a fixed order so that concurrent batches from
  -- several instances cannot deadlock.
  INSERT INTO balances (user_id) SELECT unnest(accounts) ON CONFLICT (user_id) DO NOTHING;
  SELECT count(*) INTO locked
  FROM (SELECT 1 FROM balances b WHERE b.user_id = ANY (accounts) ORDER BY b.user_id FOR UPDATE) l;
  IF locked <> cardinality(accounts) THEN
    RAISE EXCEPTION 'record_usage: % of % accounts in the batch do not exist',
      cardinality(accounts) - locked, cardinality(accounts) USING ERRCODE = 'foreign_key_violation';
  END IF;
  SELECT coalesce(array_agg(id), '{}') INTO live_keys
  FROM (SELECT k.id FROM api_keys k
        WHERE k.id IN (SELECT DISTINCT (e->>'api_key_id')::uuid FROM jsonb_array_elements(p_batch) e)
        ORDER BY k.id FOR KEY SHARE) l;

  RETURN QUERY
  WITH input AS (
    SELECT DISTINCT ON (x.request_id) x.*
    FROM ROWS FROM (jsonb_to_recordset(p_batch) AS (
      id uuid, request_id text, user_id uuid, api_key_id uuid, model text, prompt_tokens bigint,
      completion_tokens bigint, cost_usd numeric, credits_deducted numeric, status text,
      request_metadata jsonb, response_metadata jsonb, created_at_us bigint))
      WITH ORDINALITY AS x(id, request_id, user_id, api_key_id, model, prompt_tokens,
                           completion_tokens, cost_usd, credits_deducted, status,
                           request_metadata, response_metadata, created_at_us, ord)
    ORDER BY x.request_id, x.ord
  ), ins AS (
    INSERT INTO usage_logs (id, request_id, user_id, api_key_id, model, prompt_tokens,
                            completion_tokens, total_tokens, cost_usd, credits_deducted, status,
                            request_metadata, response_metadata, created_at)
    SELECT coalesce(id, gen_random_uuid()), request_id, user_id,
           CASE WHEN api_key_id = ANY (live_keys) THEN api_key_id END, model, prompt_tokens,
           completion_tokens, prompt_tokens + completion_tokens, cost_usd, credits_deducted, status,
           request_metadata, response_metadata, to_timestamp(created_at_us / 1000000.0)
    FROM input ORDER BY ord
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, user_id, credits_deducted, created_at
  ), per_user AS (
    SELECT user_id, sum(credits_deducted) AS total, count(*) AS n FROM ins GROUP BY user_id
  ), upd AS (
    UPDATE balances b SET credits = b.credits - p.total, version = b.version + 1, updated_at = now()
    FROM per_user p WHERE b.user_id = p.user_id
    RETURNING b.user_id, b.credits AS new_credits, b.version AS new_version, p.total, p.n
  ), led AS (
    INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type,
                                     request_id, created_at)
    SELECT i.user_id, -i.credits_deducted,
           u.new_credits + u.total - sum(i.credits_deducted) OVER
             (PARTITION BY i.user_id ORDER BY i.created_at, i.request_id COLLATE "C"
              ROWS UNBOUNDED PRECEDING),
           'usage', i.request_id, i.created_at
    FROM ins i JOIN upd u ON u.user_id = i.user_id
    ORDER BY i.user_id, i.created_at, i.request_id COLLATE "C"
  ), used AS (
    UPDATE api_keys k SET last_used_at = t.last_used
    FROM (SELECT api_key_id, max(to_timestamp(created_at_us / 1000000.0)) AS last_used FROM input
          WHERE api_key_id IS NOT NULL GROUP BY api_key_id) t
    WHERE k.id = t.api_key_id AND (k.last_used_at IS NULL OR k.last_used_at < t.last_used)
  )
  -- The CTEs all see the snapshot from before the statement: new balances come from upd.
  SELECT b.user_id, (coalesce(u.new_credits, b.credits) * 1000000)::bigint,
         coalesce(u.new_version, b.version), coalesce(u.n, 0)::integer
  FROM balances b LEFT JOIN upd u ON u.user_id = b.user_id
  WHERE b.user_id = ANY (accounts);
END $$;
