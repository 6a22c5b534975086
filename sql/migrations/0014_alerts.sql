-- Balance and limit alerts to the operator (issue 14, part 4). Events wait in alert_outbox until
-- `tollgate serve` POSTs them, signed, to alerts.url (proxy/alerts.hpp): at least once, retried
-- with exponential backoff for up to 24 h, surviving restarts.
--
-- balance.low: per account, once per crossing. balances.low_balance_alert_usd is the threshold
-- (NULL = no alert); an event is written in the transaction that moves the balance from at or
-- above it to below it (usage batches, top-ups, refunds: every path UPDATEs balances.credits).
-- Going back to or above the threshold re-arms it.
ALTER TABLE balances
  ADD COLUMN low_balance_alert_usd numeric(18,6)
             CONSTRAINT balances_low_balance_alert_nonnegative CHECK (low_balance_alert_usd >= 0);

-- spend_limit.reached: written by the proxy's alert task (never on the request path) with a
-- deterministic event_id 'spend_limit:<key|account>:<owner id>:<period start>', so however many
-- instances refuse requests on one limit, one event per limit and period.
CREATE TABLE alert_outbox (
  id               bigserial PRIMARY KEY,
  event_id         text NOT NULL UNIQUE,        -- the receiver deduplicates on it
  type             text NOT NULL CHECK (type IN ('balance.low', 'spend_limit.reached')),
  account          uuid REFERENCES users(id) ON DELETE CASCADE,
  payload          jsonb NOT NULL,              -- the event's "data"
  created_at       timestamptz NOT NULL DEFAULT now(),
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  attempts         integer NOT NULL DEFAULT 0,  -- failed deliveries so far
  delivered_at     timestamptz,                 -- a 2xx answer
  abandoned_at     timestamptz,                 -- given up (24 h of failures)
  last_error       text
);
-- What the delivery task claims: undelivered rows by due time.
CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at)
  WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE FUNCTION tollgate_balance_low_alert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO alert_outbox (event_id, type, account, payload)
  VALUES ('evt_' || replace(gen_random_uuid()::text, '-', ''), 'balance.low', NEW.user_id,
          jsonb_build_object('account', NEW.user_id,
                             'balance_usd', NEW.credits::text,
                             'threshold_usd', NEW.low_balance_alert_usd::text,
                             'previous_balance_usd', OLD.credits::text,
                             'currency', NEW.currency));
  RETURN NULL;
END
$$;

-- Once per crossing: only an update that takes the balance from >= threshold to < threshold.
CREATE TRIGGER balances_low_alert AFTER UPDATE OF credits ON balances
  FOR EACH ROW
  WHEN (NEW.low_balance_alert_usd IS NOT NULL AND OLD.credits >= NEW.low_balance_alert_usd
        AND NEW.credits < NEW.low_balance_alert_usd)
  EXECUTE FUNCTION tollgate_balance_low_alert();
