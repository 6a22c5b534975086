-- Operator functions, the NUMERIC reference of the proxy's pricing, the batch usage recorder,
-- and NOTIFY triggers that keep every instance's caches true.

-- Glob (`*`, `?`) to LIKE, matching the whole model name; same semantics as pricing::glob_match.
CREATE FUNCTION tollgate_glob_match(pattern text, model text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT model LIKE replace(replace(replace(replace(replace(pattern,
    '\', '\\'), '%', '\%'), '_', '\_'), '*', '%'), '?', '_')
$$;

-- The pricing rule that applies to a model: highest priority, then oldest.
CREATE FUNCTION tollgate_rule_for(p_model text)
RETURNS TABLE (markup_percentage numeric, min_cost_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT r.markup_percentage, r.min_cost_usd FROM pricing_rules r
  WHERE r.is_active AND tollgate_glob_match(r.model_pattern, p_model)
  ORDER BY r.priority DESC, r.created_at, r.id LIMIT 1
$$;

-- Charge in NUMERIC for an exact upstream cost (USD): the reference the proxy must equal.
CREATE FUNCTION tollgate_charge(p_model text, p_cost numeric)
RETURNS TABLE (cost_usd numeric, charge_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT ceil(p_cost * 1000000) / 1000000,
         greatest(coalesce(r.min_cost_usd, 0),
                  ceil(p_cost * (1 + coalesce(r.markup_percentage, 0) / 100) * 1000000) / 1000000)
  FROM (SELECT 1) one LEFT JOIN tollgate_rule_for(p_model) r ON true
$$;

-- Charge from token counts and model_prices.
CREATE FUNCTION tollgate_price(p_model text, p_prompt bigint, p_completion bigint)
RETURNS TABLE (cost_usd numeric, charge_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT c.cost_usd, c.charge_usd FROM model_prices m,
    tollgate_charge(p_model, p_prompt * m.prompt_price + p_completion * m.completion_price) c
  WHERE m.model = p_model
$$;

-- Operators: add (or with a negative amount, remove) credits; returns the new balance.
CREATE FUNCTION add_credits(p_user uuid, p_amount numeric, p_note text DEFAULT NULL,
                            p_type text DEFAULT 'purchase')
RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE new_balance numeric;
BEGIN
  IF p_amount IS NULL OR p_amount = 0 THEN
    RAISE EXCEPTION 'add_credits: amount must be non-zero';
  END IF;
  IF round(p_amount, 6) <> p_amount THEN
    RAISE EXCEPTION 'add_credits: amount has more than 6 decimals';
  END IF;
  INSERT INTO balances (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
  UPDATE balances SET credits = credits + p_amount, version = version + 1, updated_at = now()
    WHERE user_id = p_user RETURNING credits INTO new_balance;
  INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, description)
    VALUES (p_user, p_amount, new_balance, p_type, p_note);
  RETURN new_balance;
END $$;

-- Records a batch of usage records (a JSON array of objects, as the proxy's usage journal
-- writes them) in one transaction: usage row, ledger row and balance debit per new request_id.
-- Replays are harmless: request_ids already recorded are skipped. Returns rows inserted.
CREATE FUNCTION record_usage(p_batch jsonb) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
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
    RETURNING 1
  )
  SELECT count(*) INTO n FROM led;

  UPDATE api_keys k SET last_used_at = t.last_used
  FROM (SELECT api_key_id, max(created_at) AS last_used FROM tollgate_usage_in
        WHERE api_key_id IS NOT NULL GROUP BY api_key_id) t
  WHERE k.id = t.api_key_id AND (k.last_used_at IS NULL OR k.last_used_at < t.last_used);
  RETURN n;
END $$;

-- Cache invalidation. Channel payloads: api key hash, account id, or nothing (reload all).
CREATE FUNCTION tollgate_notify_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM pg_notify('tollgate_api_keys', OLD.key_hash);
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.key_hash <> OLD.key_hash THEN
    PERFORM pg_notify('tollgate_api_keys', NEW.key_hash);
  END IF;
  IF TG_OP = 'INSERT' THEN  -- a cached "no such key" must go too
    PERFORM pg_notify('tollgate_api_keys', NEW.key_hash);
  END IF;
  RETURN NULL;
END $$;
-- last_used_at changes (every batch) must not invalidate: only columns the proxy caches.
CREATE TRIGGER api_keys_notify_update AFTER UPDATE OF key_hash, user_id, is_active, expires_at,
  requests_per_minute, requests_per_hour, requests_per_day, tokens_per_minute,
  max_tokens_per_request ON api_keys FOR EACH ROW EXECUTE FUNCTION tollgate_notify_api_key();
CREATE TRIGGER api_keys_notify_insert_delete AFTER INSERT OR DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION tollgate_notify_api_key();

CREATE FUNCTION tollgate_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('tollgate_accounts', coalesce(NEW.user_id, OLD.user_id)::text);
  RETURN NULL;
END $$;
CREATE TRIGGER rate_limits_notify AFTER INSERT OR UPDATE OR DELETE ON rate_limits
  FOR EACH ROW EXECUTE FUNCTION tollgate_notify_account();
CREATE TRIGGER balances_overdraft_notify AFTER UPDATE OF overdraft_usd ON balances
  FOR EACH ROW EXECUTE FUNCTION tollgate_notify_account();

CREATE FUNCTION tollgate_notify_pricing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('tollgate_pricing', TG_TABLE_NAME);
  RETURN NULL;
END $$;
CREATE TRIGGER pricing_rules_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pricing_rules
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_pricing();
CREATE TRIGGER model_prices_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON model_prices
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_notify_pricing();
