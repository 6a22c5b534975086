-- Every part of a price (issue 12, section 3), and what the upstream said it charged.
--
-- model_prices gains the per-unit prices OpenRouter's GET /models lists beside prompt and
-- completion (USD, NUMERIC(20,12) like them). NULL means "not priced separately":
--   input_cache_read_price   per prompt token read from the provider's cache   (NULL: prompt_price)
--   input_cache_write_price  per prompt token written to it                     (NULL: prompt_price)
--   internal_reasoning_price per reasoning token (part of completion_tokens)   (NULL: completion_price)
--   request_price            per request                                        (NULL: 0)
--   image_price              per image input                                    (NULL: 0)
--   web_search_price         per web search                                     (NULL: 0)
-- The model_prices_notify trigger (0002) already reloads every instance's snapshot on a change.
ALTER TABLE model_prices
  ADD COLUMN input_cache_read_price   numeric(20,12) CHECK (input_cache_read_price >= 0),
  ADD COLUMN input_cache_write_price  numeric(20,12) CHECK (input_cache_write_price >= 0),
  ADD COLUMN internal_reasoning_price numeric(20,12) CHECK (internal_reasoning_price >= 0),
  ADD COLUMN request_price            numeric(20,12) CHECK (request_price >= 0),
  ADD COLUMN image_price              numeric(20,12) CHECK (image_price >= 0),
  ADD COLUMN web_search_price         numeric(20,12) CHECK (web_search_price >= 0);

-- Usage rows: the token counts the new prices apply to (parts of prompt_tokens and
-- completion_tokens, never added to them), and the cost the serving upstream reported
-- (`usage.cost`, USD, exact as sent to 12 decimals; NULL when it reported none).
-- usage_logs.upstream (0007) is now written too.
ALTER TABLE usage_logs
  ADD COLUMN cached_tokens      bigint NOT NULL DEFAULT 0,
  ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0,
  ADD COLUMN reasoning_tokens   bigint NOT NULL DEFAULT 0,
  ADD COLUMN upstream_cost_usd  numeric;

-- Charge from every metered quantity and model_prices, in NUMERIC: the reference
-- pricing::PricingSnapshot::cost() + charge() must equal to the unit. Counts below 0 count 0;
-- cached reads are at most the prompt, cache writes at most the rest of it, reasoning at most
-- the completion (the proxy refuses usage that breaks these, so they only guard the formula).
--   cost = (prompt − cached − cache_write) × prompt_price
--        + cached × coalesce(input_cache_read_price, prompt_price)
--        + cache_write × coalesce(input_cache_write_price, prompt_price)
--        + (completion − reasoning) × completion_price
--        + reasoning × coalesce(internal_reasoning_price, completion_price)
--        + requests × coalesce(request_price, 0) + images × coalesce(image_price, 0)
--        + web_searches × coalesce(web_search_price, 0)
-- The three-argument tollgate_price() of 0002 stays: tokens at prompt and completion price only.
CREATE FUNCTION tollgate_price(p_model text, p_prompt bigint, p_completion bigint,
                               p_cached bigint, p_cache_write bigint, p_reasoning bigint,
                               p_requests bigint, p_images bigint, p_web_searches bigint)
RETURNS TABLE (cost_usd numeric, charge_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT c.cost_usd, c.charge_usd
  FROM model_prices m,
    LATERAL (SELECT greatest(p_prompt, 0) AS prompt, greatest(p_completion, 0) AS completion) t,
    LATERAL (SELECT least(greatest(p_cached, 0), t.prompt) AS cached,
                    least(greatest(p_reasoning, 0), t.completion) AS reasoning) a,
    LATERAL (SELECT least(greatest(p_cache_write, 0), t.prompt - a.cached) AS cache_write) b,
    tollgate_charge(p_model,
        (t.prompt - a.cached - b.cache_write) * m.prompt_price
      + a.cached * coalesce(m.input_cache_read_price, m.prompt_price)
      + b.cache_write * coalesce(m.input_cache_write_price, m.prompt_price)
      + (t.completion - a.reasoning) * m.completion_price
      + a.reasoning * coalesce(m.internal_reasoning_price, m.completion_price)
      + greatest(p_requests, 0) * coalesce(m.request_price, 0)
      + greatest(p_images, 0) * coalesce(m.image_price, 0)
      + greatest(p_web_searches, 0) * coalesce(m.web_search_price, 0)) c
  WHERE m.model = p_model
$$;

-- Revenue, upstream cost and margin per upstream, model and day (UTC). upstream_cost_usd sums
-- what the upstreams reported (rows that reported none add nothing; upstream_cost_reported
-- counts those that did); computed_cost_usd sums tollgate's own cost (usage_logs.cost_usd);
-- margin_usd is revenue minus the reported cost where there is one, else the computed cost.
CREATE VIEW usage_margin AS
SELECT upstream,
       model,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS requests,
       sum(credits_deducted) AS revenue_usd,
       sum(upstream_cost_usd) AS upstream_cost_usd,
       count(upstream_cost_usd) AS upstream_cost_reported,
       sum(cost_usd) AS computed_cost_usd,
       sum(credits_deducted) - sum(coalesce(upstream_cost_usd, cost_usd)) AS margin_usd
FROM usage_logs
GROUP BY upstream, model, (created_at AT TIME ZONE 'UTC')::date;

-- record_usage() as in 0006, and now reading the new columns: "cached_tokens",
-- "cache_write_tokens", "reasoning_tokens" (absent: 0), "upstream" and "upstream_cost_usd"
-- (a decimal string; absent or null: NULL). Journals written before this read as before.
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
      request_metadata jsonb, response_metadata jsonb, created_at_us bigint,
      cached_tokens bigint, cache_write_tokens bigint, reasoning_tokens bigint, upstream text,
      upstream_cost_usd numeric))
      WITH ORDINALITY AS x(id, request_id, user_id, api_key_id, model, prompt_tokens,
                           completion_tokens, cost_usd, credits_deducted, status,
                           request_metadata, response_metadata, created_at_us,
                           cached_tokens, cache_write_tokens, reasoning_tokens, upstream,
                           upstream_cost_usd, ord)
    ORDER BY x.request_id, x.ord
  ), ins AS (
    INSERT INTO usage_logs (id, request_id, user_id, api_key_id, model, prompt_tokens,
                            completion_tokens, total_tokens, cost_usd, credits_deducted, status,
                            request_metadata, response_metadata, created_at,
                            cached_tokens, cache_write_tokens, reasoning_tokens, upstream,
                            upstream_cost_usd)
    SELECT coalesce(id, gen_random_uuid()), request_id, user_id,
           CASE WHEN api_key_id = ANY (live_keys) THEN api_key_id END, model, prompt_tokens,
           completion_tokens, prompt_tokens + completion_tokens, cost_usd, credits_deducted, status,
           request_metadata, response_metadata, to_timestamp(created_at_us / 1000000.0),
           coalesce(cached_tokens, 0), coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0),
           upstream, upstream_cost_usd
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
