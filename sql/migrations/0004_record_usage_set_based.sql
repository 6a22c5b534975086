-- record_usage() without a temporary table: the batch is read once with jsonb_to_recordset and
-- recorded by one statement of data-modifying CTEs. Same contract as in 0003 (usage row, ledger
-- row and balance debit per new request_id in one transaction; replays skipped; per-account
-- balance, version and count of new rows returned).
CREATE OR REPLACE FUNCTION record_usage(p_batch jsonb)
RETURNS TABLE (account uuid, credits_micros bigint, balance_version bigint, inserted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE accounts uuid[];
BEGIN
  accounts := ARRAY(SELECT DISTINCT (e->>'user_id')::uuid FROM jsonb_array_elements(p_batch) e ORDER BY 1);
  -- Every account has a balance row, locked in a fixed order so that concurrent batches from
  -- several instances cannot deadlock.
  INSERT INTO balances (user_id) SELECT unnest(accounts) ON CONFLICT (user_id) DO NOTHING;
  PERFORM 1 FROM balances b WHERE b.user_id = ANY (accounts) ORDER BY b.user_id FOR UPDATE;

  RETURN QUERY
  WITH input AS (
    SELECT DISTINCT ON (x.request_id) x.*
    FROM jsonb_to_recordset(p_batch) AS x(
      request_id text, user_id uuid, api_key_id uuid, model text, prompt_tokens integer,
      completion_tokens integer, cost_usd numeric, credits_deducted numeric, status text,
      request_metadata jsonb, response_metadata jsonb, created_at_us bigint)
  ), ins AS (
    INSERT INTO usage_logs (request_id, user_id, api_key_id, model, prompt_tokens,
                            completion_tokens, total_tokens, cost_usd, credits_deducted, status,
                            request_metadata, response_metadata, created_at)
    SELECT request_id, user_id, api_key_id, model, prompt_tokens, completion_tokens,
           prompt_tokens + completion_tokens, cost_usd, credits_deducted, status,
           request_metadata, response_metadata, to_timestamp(created_at_us / 1000000.0)
    FROM input
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
             (PARTITION BY i.user_id ORDER BY i.created_at, i.request_id ROWS UNBOUNDED PRECEDING),
           'usage', i.request_id, i.created_at
    FROM ins i JOIN upd u ON u.user_id = i.user_id
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
