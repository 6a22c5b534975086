-- Images (issue 13): image output tokens and generated images get prices of their own, usage
-- rows count them, and model_prices names each model and says when it was added.
--
-- model_prices (USD, NUMERIC(20,12) like the other prices):
--   image_output_price      per image-output token: completion tokens that are image output
--                           (OpenRouter chat with modalities ["image","text"] counts them in
--                           usage.completion_tokens_details.image_tokens; its GET /models
--                           lists the price as pricing.image_output). NULL: not priced
--                           separately — the proxy then charges from the upstream's usage.cost
--                           when it reported one, else at the completion price (the formula
--                           below; proxy/record.cpp, reported_cost_to_charge)
--   image_generation_price  per generated image (Images API, e.g. DALL-E 3 at 0.04); NULL: 0
--                           in the formula; a model with neither this nor any token price is
--                           charged from usage.cost when reported. OpenRouter lists no such
--                           price: operators set it in SQL
--   name                    display name (OpenRouter's `name`); NULL: the model id
--   created_at              when the price was added (GET /v1/models reports it as `created`)
-- The model_prices_notify trigger (0002) already reloads every instance's snapshot on a change.
ALTER TABLE model_prices
  ADD COLUMN image_output_price     numeric(20,12) CHECK (image_output_price >= 0),
  ADD COLUMN image_generation_price numeric(20,12) CHECK (image_generation_price >= 0),
  ADD COLUMN name                   text,
  ADD COLUMN created_at             timestamptz NOT NULL DEFAULT now();

-- Usage rows: image output tokens (a part of completion_tokens, never added to it, like
-- reasoning_tokens) and the images an Images API request generated.
ALTER TABLE usage_logs
  ADD COLUMN image_tokens     bigint NOT NULL DEFAULT 0,
  ADD COLUMN images_generated bigint NOT NULL DEFAULT 0;

-- Charge from every metered quantity and model_prices, in NUMERIC: the reference
-- pricing::PricingSnapshot::cost() + charge() must equal to the unit. The arguments are the
-- nine of 0008, in the same order, then the two of this migration:
--   tollgate_price(model, prompt, completion, cached, cache_write, reasoning,
--                  requests, images, web_searches, image_tokens, images_generated)
-- (images: image inputs; images_generated: images an Images API request produced.)
-- Counts below 0 count 0; cached reads are at most the prompt, cache writes at most the rest of
-- it, reasoning at most the completion, image tokens at most the rest of the completion:
--   cost = (prompt − cached − cache_write) × prompt_price
--        + cached × coalesce(input_cache_read_price, prompt_price)
--        + cache_write × coalesce(input_cache_write_price, prompt_price)
--        + (completion − reasoning − image_tokens) × completion_price
--        + reasoning × coalesce(internal_reasoning_price, completion_price)
--        + image_tokens × coalesce(image_output_price, completion_price)
--        + requests × coalesce(request_price, 0) + images × coalesce(image_price, 0)
--        + web_searches × coalesce(web_search_price, 0)
--        + images_generated × coalesce(image_generation_price, 0)
CREATE FUNCTION tollgate_price(p_model text, p_prompt bigint, p_completion bigint,
                               p_cached bigint, p_cache_write bigint, p_reasoning bigint,
                               p_requests bigint, p_images bigint, p_web_searches bigint,
                               p_image_tokens bigint, p_images_generated bigint)
RETURNS TABLE (cost_usd numeric, charge_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT c.cost_usd, c.charge_usd
  FROM model_prices m,
    LATERAL (SELECT greatest(p_prompt, 0) AS prompt, greatest(p_completion, 0) AS completion) t,
    LATERAL (SELECT least(greatest(p_cached, 0), t.prompt) AS cached,
                    least(greatest(p_reasoning, 0), t.completion) AS reasoning) a,
    LATERAL (SELECT least(greatest(p_cache_write, 0), t.prompt - a.cached) AS cache_write,
                    least(greatest(p_image_tokens, 0), t.completion - a.reasoning) AS image_tokens) b,
    tollgate_charge(p_model,
        (t.prompt - a.cached - b.cache_write) * m.prompt_price
      + a.cached * coalesce(m.input_cache_read_price, m.prompt_price)
      + b.cache_write * coalesce(m.input_cache_write_price, m.prompt_price)
      + (t.completion - a.reasoning - b.image_tokens) * m.completion_price
      + a.reasoning * coalesce(m.internal_reasoning_price, m.completion_price)
      + b.image_tokens * coalesce(m.image_output_price, m.completion_price)
      + greatest(p_requests, 0) * coalesce(m.request_price, 0)
      + greatest(p_images, 0) * coalesce(m.image_price, 0)
      + greatest(p_web_searches, 0) * coalesce(m.web_search_price, 0)
      + greatest(p_images_generated, 0) * coalesce(m.image_generation_price, 0)) c
  WHERE m.model = p_model
$$;

-- The nine-argument form of 0008 stays, now the eleven-argument one with no image tokens and
-- no generated images.
CREATE OR REPLACE FUNCTION tollgate_price(p_model text, p_prompt bigint, p_completion bigint,
                                          p_cached bigint, p_cache_write bigint, p_reasoning bigint,
                                          p_requests bigint, p_images bigint, p_web_searches bigint)
RETURNS TABLE (cost_usd numeric, charge_usd numeric)
LANGUAGE sql STABLE AS $$
  SELECT * FROM tollgate_price(p_model, p_prompt, p_completion, p_cached, p_cache_write, p_reasoning,
                               p_requests, p_images, p_web_searches, 0, 0)
$$;

-- usage_margin (0008) sums usage_logs.cost_usd and upstream_cost_usd as recorded; it prices
-- nothing itself, so it stays as it is.

-- record_usage() as in 0008, and now reading "image_tokens" and "images_generated" (absent:
-- 0). Journals written before this read as before.
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
      upstream_cost_usd numeric, image_tokens bigint, images_generated bigint))
      WITH ORDINALITY AS x(id, request_id, user_id, api_key_id, model, prompt_tokens,
                           completion_tokens, cost_usd, credits_deducted, status,
                           request_metadata, response_metadata, created_at_us,
                           cached_tokens, cache_write_tokens, reasoning_tokens, upstream,
                           upstream_cost_usd, image_tokens, images_generated, ord)
    ORDER BY x.request_id, x.ord
  ), ins AS (
    INSERT INTO usage_logs (id, request_id, user_id, api_key_id, model, prompt_tokens,
                            completion_tokens, total_tokens, cost_usd, credits_deducted, status,
                            request_metadata, response_metadata, created_at,
                            cached_tokens, cache_write_tokens, reasoning_tokens, upstream,
                            upstream_cost_usd, image_tokens, images_generated)
    SELECT coalesce(id, gen_random_uuid()), request_id, user_id,
           CASE WHEN api_key_id = ANY (live_keys) THEN api_key_id END, model, prompt_tokens,
           completion_tokens, prompt_tokens + completion_tokens, cost_usd, credits_deducted, status,
           request_metadata, response_metadata, to_timestamp(created_at_us / 1000000.0),
           coalesce(cached_tokens, 0), coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0),
           upstream, upstream_cost_usd, coalesce(image_tokens, 0), coalesce(images_generated, 0)
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
