-- Admission (Redis balance cache): record_usage() now reports, per account, the balance and
-- version after the batch, and every balance change is announced with its version.

DROP FUNCTION record_usage(jsonb);

-- Records a batch of usage records (a JSON array of objects, as the proxy's usage journal
-- writes them) in one transaction: usage row, ledger row and balance debit per new request_id.
-- Replays are harmless: request_ids already recorded are skipped. Returns, per account in the
-- batch, the balance after it (credit units) and its version (for the Redis balance cache),
-- and how many of its records were new.
CREATE FUNCTION record_usage(p_batch jsonb)
RETURNS TABLE (account uuid, credits_micros bigint, balance_version bigint, inserted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE accounts uuid[];
BEGIN
  CREATE TEMP TABLE IF NOT EXISTS tollgate_usage_in (
    ord bigint, request_id text, user_id uuid, api_key_id uuid, model text,
    prompt_tokens integer, completion_tokens integer, cost_usd numeric, credits_deducted numeric,
    status text, request_metadata jsonb, response_metadata jsonb, created_at timestamptz
  ) ON COMMIT DELETE ROWS;
  DELETE FROM tollgate_usage_in;

  INSERT INTO tollgate_usage_in
  SELECT DISTINCT ON (e.j->>'request_id')
         e.ord, e.j->>'request_id', (e.j->>'user_id')::uuid, (e.j->>'api_key_id')::uuid,
         e.j->>'model', (e.j->>'prompt_tokens')::integer, (e.j->>'completion_tokens')::integer,
         (e.j->>'cost_usd')::numeric, (e.j->>'credits_deducted')::numeric, e.j->>'status',
         e.j->'request_metadata', e.j->'response_metadata',
         to_timestamp((e.j->>'created_at_us')::numeric / 1000000)
  FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS e(j, ord)
  ORDER BY e.j->>'request_id', e.ord;

  accounts := ARRAY(SELECT DISTINCT user_id FROM tollgate_usage_in ORDER BY 1);
  -- Drop those already recorded (replays), then lock the balances in a fixed order so that
  -- concurrent batches from several instances cannot deadlock.
  DELETE FROM tollgate_usage_in i USING usage_logs u WHERE u.request_id = i.request_id;
  INSERT INTO balances (user_id) SELECT DISTINCT user_id FROM tollgate_usage_in
    ON CONFLICT (user_id) DO NOTHING;
  PERFORM 1 FROM balances b WHERE b.user_id IN (SELECT user_id FROM tollgate_usage_in)
    ORDER BY b.user_id FOR UPDATE;

  WITH ins AS (
    INSERT INTO usage_logs (request_id, user_id, api_key_id, model, prompt_tokens,
                            completion_tokens, total_tokens, cost_usd, credits_deducted, status,
                            request_metadata, response_metadata, created_at)
    SELECT request_id, user_id, api_key_id, model, prompt_tokens, completion_tokens,
           prompt_tokens + completion_tokens, cost_usd, credits_deducted, status,
           request_metadata, response_metadata, created_at
    FROM tollgate_usage_in ORDER BY ord
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, user_id, credits_deducted, created_at
  ), per_user AS (
    SELECT user_id, sum(credits_deducted) AS total FROM ins GROUP BY user_id
  ), upd AS (
    UPDATE balances b SET credits = b.credits - p.total, version = b.version + 1,
                          updated_at = now()
    FROM per_user p WHERE b.user_id = p.user_id
    RETURNING b.user_id, b.credits AS new_credits, p.total
  ), led AS (
    INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type,
                                     request_id, created_at)
    SELECT i.user_id, -i.credits_deducted,
           u.new_credits + u.total - sum(i.credits_deducted) OVER
             (PARTITION BY i.user_id ORDER BY i.created_at, i.request_id ROWS UNBOUNDED PRECEDING),
           'usage', i.request_id, i.created_at
    FROM ins i JOIN upd u ON u.user_id = i.user_id
    RETURNING user_id
  )
  SELECT array_agg(user_id) INTO accounts FROM (SELECT unnest(accounts) AS user_id
    UNION ALL SELECT user_id FROM led) all_rows;

  UPDATE api_keys k SET last_used_at = t.last_used
  FROM (SELECT api_key_id, max(created_at) AS last_used FROM tollgate_usage_in
        WHERE api_key_id IS NOT NULL GROUP BY api_key_id) t
  WHERE k.id = t.api_key_id AND (k.last_used_at IS NULL OR k.last_used_at < t.last_used);

  -- accounts holds each batch account once, plus once more per new ledger row.
  RETURN QUERY
    SELECT b.user_id, (b.credits * 1000000)::bigint, b.version, (count(*) - 1)::integer
    FROM unnest(accounts) AS a(user_id) JOIN balances b ON b.user_id = a.user_id
    GROUP BY b.user_id, b.credits, b.version;
END $$;

-- Balance changes (top-ups, batches): payload "account version credits_micros", so every
-- instance refreshes its Redis balance cache within milliseconds, version-ordered.
CREATE FUNCTION tollgate_notify_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('tollgate_balances',
                    NEW.user_id::text || ' ' || NEW.version || ' ' || (NEW.credits * 1000000)::bigint);
  RETURN NULL;
END $$;
CREATE TRIGGER balances_notify AFTER INSERT OR UPDATE OF credits, version ON balances
  FOR EACH ROW EXECUTE FUNCTION tollgate_notify_balance();
