-- OpenRouter's self-service endpoints (issue 14, part 5): GET /api/v1/key sums one key's
-- charges over calendar-UTC periods, GET /api/v1/credits sums the account's ledger, and
-- GET /api/v1/generation finds a usage row by its upstream generation id. Indexes for each, so
-- none of them scans an account's whole history (proxy/self_service.cpp, sql/account_queries.cpp).
--
-- Cost on the hot write path: one more B-tree entry per usage row that has a generation id
-- (the key index replaces 0012's); ledger usage rows are not in the partial ledger index. On a
-- large existing usage_logs these CREATE INDEX statements lock writes while they build: run the
-- migration in a maintenance window, or create the same indexes CONCURRENTLY beforehand (the
-- IF NOT EXISTS makes the migration then skip them).

-- A key's charges since a period start: an index-only scan (credits_deducted is included).
-- The spend-limit seeding (sql::charged_since, 0012) sums the same range with it. It also makes
-- a key's deletion (0005's trigger nulls usage_logs.api_key_id) an index lookup instead of a
-- table scan.
CREATE INDEX IF NOT EXISTS usage_logs_api_key_created_idx
  ON usage_logs (api_key_id, created_at) INCLUDE (credits_deducted);

-- The generation of a request, by the id the upstream gave it (X-Generation-Id / the body's id).
CREATE INDEX IF NOT EXISTS usage_logs_generation_id_idx
  ON usage_logs ((response_metadata->>'generation_id'))
  WHERE (response_metadata->>'generation_id') IS NOT NULL;

-- The account's credits (purchases, bonuses, grants, refunds, …): the few ledger rows that are
-- not usage charges, without reading the many that are.
CREATE INDEX IF NOT EXISTS credit_transactions_credits_idx
  ON credit_transactions (user_id) INCLUDE (amount)
  WHERE transaction_type <> 'usage';
