-- Usage recording at COPY speed.
--
-- Why the foreign keys go: usage_logs and credit_transactions are the two append-heavy tables
-- (one row each per proxied request). A foreign key is a per-row RI trigger on every insert (a
-- lookup in users / api_keys and a FOR KEY SHARE row lock): measured on batches of 2,000, about
-- 15 µs per usage row (two keys) and 7 µs per ledger row — roughly half of what recording a
-- usage record cost. Their integrity is now checked once per batch instead, by whoever writes
-- these tables:
--   * record_usage() (below) and the usage writer's COPY path (sql/usage_writer.cpp) lock the
--     batch's balances rows FOR UPDATE, and balances keeps its foreign key to users: a user
--     without a balances row fails the batch (the balances insert fails, or fewer rows than
--     accounts get locked: SQLSTATE 23503), and a user being deleted cannot finish (its cascade
--     to balances waits for the lock) until the batch has committed, after which the trigger
--     below deletes the batch's rows too;
--   * they take FOR KEY SHARE on the batch's api_keys rows and record NULL for a key that no
--     longer exists, so a concurrent key delete waits and then nulls the new rows as well;
--   * add_credits() refuses unknown users (balances row required, see below).
-- The ON DELETE semantics stay, as statement-level triggers that see all deleted rows at once:
-- deleting users deletes their usage_logs and credit_transactions rows; deleting api_keys sets
-- usage_logs.api_key_id to NULL.

-- The constraint names as 0001 created them, looked up rather than assumed.
DO $$
DECLARE c record;
BEGIN
  FOR c IN
    SELECT con.conname, con.conrelid::regclass AS tbl FROM pg_constraint con
    WHERE con.contype = 'f'
      AND ((con.conrelid = 'usage_logs'::regclass AND con.confrelid IN ('users'::regclass, 'api_keys'::regclass))
        OR (con.conrelid = 'credit_transactions'::regclass AND con.confrelid = 'users'::regclass))
  LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
  END LOOP;
END $$;

-- ON DELETE CASCADE for users → usage_logs, credit_transactions.
CREATE FUNCTION tollgate_users_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM usage_logs u USING deleted_users d WHERE u.user_id = d.id;
  DELETE FROM credit_transactions t USING deleted_users d WHERE t.user_id = d.id;
  RETURN NULL;
END $$;
CREATE TRIGGER users_delete_usage AFTER DELETE ON users
  REFERENCING OLD TABLE AS deleted_users
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_users_deleted();

-- ON DELETE SET NULL for api_keys → usage_logs. Rows whose own user is gone are skipped: they
-- belong to a user being deleted (the key went with it by cascade) and users_delete_usage
-- deletes them right after. usage_logs has no index on api_key_id (it would cost every insert);
-- a key delete scans usage_logs once per statement, as the old foreign key did once per key.
CREATE FUNCTION tollgate_api_keys_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE usage_logs u SET api_key_id = NULL FROM deleted_keys d
  WHERE u.api_key_id = d.id AND EXISTS (SELECT 1 FROM users x WHERE x.id = u.user_id);
  RETURN NULL;
END $$;
CREATE TRIGGER api_keys_delete_usage AFTER DELETE ON api_keys
  REFERENCING OLD TABLE AS deleted_keys
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_api_keys_deleted();

-- What else the foreign keys did. TRUNCATE users (CASCADE) emptied both tables; a referenced
-- id could not change. Keys are nulled on TRUNCATE api_keys; ids of users and api_keys are
-- immutable (the triggers fire only when an UPDATE sets the id column).
CREATE FUNCTION tollgate_users_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE usage_logs, credit_transactions;
  RETURN NULL;
END $$;
CREATE TRIGGER users_truncate_usage AFTER TRUNCATE ON users
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_users_truncated();
CREATE FUNCTION tollgate_api_keys_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE usage_logs SET api_key_id = NULL WHERE api_key_id IS NOT NULL;
  RETURN NULL;
END $$;
CREATE TRIGGER api_keys_truncate_usage AFTER TRUNCATE ON api_keys
  FOR EACH STATEMENT EXECUTE FUNCTION tollgate_api_keys_truncated();
CREATE FUNCTION tollgate_id_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%.id cannot change (usage and ledger rows refer to it)', TG_TABLE_NAME
    USING ERRCODE = 'foreign_key_violation';
END $$;
CREATE TRIGGER users_id_immutable BEFORE UPDATE OF id ON users
  FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION tollgate_id_immutable();
CREATE TRIGGER api_keys_id_immutable BEFORE UPDATE OF id ON api_keys
  FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION tollgate_id_immutable();

-- add_credits() as in 0002, but an account whose balances row vanished under it (deleted
-- concurrently) is refused explicitly; an unknown account still fails on the balances insert
-- (foreign key to users).
CREATE OR REPLACE FUNCTION add_credits(p_user uuid, p_amount numeric, p_note text DEFAULT NULL,
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
  IF new_balance IS NULL THEN
    RAISE EXCEPTION 'add_credits: no such account %', p_user USING ERRCODE = 'foreign_key_violation';
  END IF;
  INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, description)
    VALUES (p_user, p_amount, new_balance, p_type, p_note);
  RETURN new_balance;
END $$;

-- record_usage(): the same contract and result as in 0004 (usage row, ledger row and balance
-- debit per new request_id in one transaction; replays skipped; per account of the batch its
-- balance in credit units, version and count of new rows), and now
--   * a record may carry "id" (usage_logs.id; the usage writer sends a UUIDv7), else a random one;
--   * every account of the batch must hold a balances row, locked FOR UPDATE in uuid order; one
--     that does not (unknown or deleted user) fails the whole batch with SQLSTATE 23503;
--   * the batch's api_keys rows are locked FOR KEY SHARE; a key that no longer exists is
--     recorded as NULL;
--   * ties in created_at are ordered by request_id in byte order (COLLATE "C"), whatever the
--     database collation, so the usage writer computes the same ledger balance_after client-side;
--   * of duplicate request_ids inside one batch the first is recorded.
-- It is the usage writer's path for replays and batches with duplicates (sql/usage_writer.cpp).
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
      id uuid, request_id text, user_id uuid, api_key_id uuid, model text, prompt_tokens integer,
      completion_tokens integer, cost_usd numeric, credits_deducted numeric, status text,
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
