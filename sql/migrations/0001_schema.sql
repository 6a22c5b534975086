-- tollgate schema. Table and column names follow the reference architecture
-- (shared/reference/ai-reseller-architecture.md); money is NUMERIC, never float.
-- Amounts: balances/costs in USD with 6 decimals (1 credit unit = 1e-6 USD),
-- per-token prices in USD with 12 decimals.

CREATE TABLE users (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email       text NOT NULL UNIQUE CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
  full_name   text,
  company     text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  key_hash      text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),  -- SHA-256, hex
  key_prefix    text NOT NULL,                                            -- display only
  name          text,
  is_active     boolean NOT NULL DEFAULT true,
  last_used_at  timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz,
  -- Per-key rate-limit overrides; NULL = the account's rate_limits row applies.
  requests_per_minute     integer CHECK (requests_per_minute >= 0),
  requests_per_hour       integer CHECK (requests_per_hour >= 0),
  requests_per_day        integer CHECK (requests_per_day >= 0),
  tokens_per_minute       integer CHECK (tokens_per_minute >= 0),
  max_tokens_per_request  integer CHECK (max_tokens_per_request >= 0)
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);
CREATE INDEX api_keys_key_prefix_idx ON api_keys (key_prefix);

CREATE TABLE balances (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id        uuid NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
  credits        numeric(18,6) NOT NULL DEFAULT 0,        -- USD
  currency       text NOT NULL DEFAULT 'USD',
  overdraft_usd  numeric(18,6) NOT NULL DEFAULT 0 CHECK (overdraft_usd >= 0),
  version        bigint NOT NULL DEFAULT 0,               -- bumped on every change
  updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The ledger: Σ amount = balances.credits for every account.
CREATE TABLE credit_transactions (
  id                bigserial PRIMARY KEY,
  user_id           uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  amount            numeric(18,6) NOT NULL,               -- USD; usage rows are negative
  balance_after     numeric(18,6) NOT NULL,
  transaction_type  text NOT NULL CHECK (transaction_type IN ('purchase','usage','refund','bonus')),
  request_id        text,
  description       text,
  created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_transactions_user_idx ON credit_transactions (user_id, created_at);
CREATE UNIQUE INDEX credit_transactions_usage_request_idx
  ON credit_transactions (request_id) WHERE transaction_type = 'usage';

CREATE TABLE rate_limits (
  id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id                 uuid NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
  requests_per_minute     integer NOT NULL DEFAULT 600 CHECK (requests_per_minute >= 0),
  requests_per_hour       integer NOT NULL DEFAULT 20000 CHECK (requests_per_hour >= 0),
  requests_per_day        integer NOT NULL DEFAULT 200000 CHECK (requests_per_day >= 0),
  tokens_per_minute       integer NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),  -- 0 = unlimited
  max_tokens_per_request  integer NOT NULL DEFAULT 0 CHECK (max_tokens_per_request >= 0),
  updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_prices (
  model             text PRIMARY KEY,
  prompt_price      numeric(20,12) NOT NULL CHECK (prompt_price >= 0),      -- USD per token
  completion_price  numeric(20,12) NOT NULL CHECK (completion_price >= 0),  -- USD per token
  context_length    integer,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pricing_rules (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  model_pattern      text NOT NULL,                         -- glob: * and ?
  markup_percentage  numeric(7,2) NOT NULL DEFAULT 0 CHECK (markup_percentage >= -100),
  min_cost_usd       numeric(18,6) NOT NULL DEFAULT 0 CHECK (min_cost_usd >= 0),
  is_active          boolean NOT NULL DEFAULT true,
  priority           integer NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE usage_logs (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id         text NOT NULL UNIQUE,
  user_id            uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  api_key_id         uuid REFERENCES api_keys(id) ON DELETE SET NULL,
  model              text NOT NULL,
  prompt_tokens      integer NOT NULL DEFAULT 0,
  completion_tokens  integer NOT NULL DEFAULT 0,
  total_tokens       integer NOT NULL DEFAULT 0,
  cost_usd           numeric(18,6) NOT NULL DEFAULT 0,   -- upstream cost, rounded up
  credits_deducted   numeric(18,6) NOT NULL DEFAULT 0,   -- what the account paid
  status             text NOT NULL,
  request_metadata   jsonb,
  response_metadata  jsonb,
  created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_logs_user_created_idx ON usage_logs (user_id, created_at);
CREATE INDEX usage_logs_created_idx ON usage_logs (created_at);

-- Every account has a balance and rate limits from the start.
CREATE FUNCTION tollgate_user_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO balances (user_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
  INSERT INTO rate_limits (user_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
  RETURN NEW;
END $$;
CREATE TRIGGER users_defaults AFTER INSERT ON users
  FOR EACH ROW EXECUTE FUNCTION tollgate_user_defaults();
