-- Stripe top-ups (issue 14, part 1): POST /webhooks/stripe records every verified event in
-- stripe_events, and moves money in the same transaction (tollgate_stripe_event()). The event id
-- is the primary key, so a replay — Stripe retries for 3 days, and may deliver one event several
-- times at once — inserts nothing and moves nothing.
CREATE TABLE stripe_events (
  id                 text PRIMARY KEY,                  -- Stripe's event id, "evt_…"
  type               text NOT NULL,                     -- "checkout.session.completed", …
  created_at         timestamptz,                       -- Stripe's event.created
  processed_at       timestamptz NOT NULL DEFAULT now(),
  account            uuid REFERENCES users(id) ON DELETE SET NULL,
  account_ref        text,                              -- what the event named (uuid or email)
  outcome            text NOT NULL CHECK (outcome IN (
                       'credited',         -- a purchase row added `amount`
                       'refunded',         -- a refund row took `amount` back
                       'ignored',          -- nothing to do (unpaid session, refund already taken)
                       'unhandled',        -- a type, mode or currency tollgate does not act on
                       'unknown_account',  -- a paid session naming no known account: fix, then credit by hand
                       'unmatched',        -- a refund of a charge tollgate did not credit
                       'invalid')),        -- unusable amounts (metadata.credits_usd)
  note               text,
  amount             numeric(18,6) CHECK (amount > 0), -- USD credited or taken back
  object_id          text,                              -- data.object.id: "cs_…", "ch_…"
  payment_intent     text,                              -- "pi_…": how a refund finds its purchase
  purchase_event_id  text REFERENCES stripe_events(id), -- refunds: the purchase they take from
  payload            jsonb NOT NULL                     -- the event as Stripe sent it
);
CREATE INDEX stripe_events_purchase_idx ON stripe_events (payment_intent) WHERE outcome = 'credited';
CREATE INDEX stripe_events_refunds_idx ON stripe_events (purchase_event_id) WHERE purchase_event_id IS NOT NULL;
CREATE INDEX stripe_events_outcome_idx ON stripe_events (outcome, processed_at);

-- Ledger rows made by Stripe events: the event, and for a refund row the purchase row it
-- takes back from.
ALTER TABLE credit_transactions
  ADD COLUMN stripe_event_id text REFERENCES stripe_events(id),
  ADD COLUMN refund_of bigint REFERENCES credit_transactions(id);
CREATE UNIQUE INDEX credit_transactions_stripe_event_idx ON credit_transactions (stripe_event_id)
  WHERE stripe_event_id IS NOT NULL;

-- Applies one verified Stripe event, in one transaction. Returns the outcome, or 'duplicate' when
-- the event id is already recorded (then nothing is done). The C++ side (proxy/stripe_event.cpp)
-- has read the event: p_action is
--   'credit': add p_amount (USD) to the account p_account_ref (users.id or email) — a 'purchase'
--             ledger row; an unknown account is recorded as 'unknown_account' and credits nothing;
--   'refund': p_amount is the charge's cumulative amount_refunded, p_charge_amount its amount
--             (USD; 0 when unknown). The purchase is the 'credited' event with the same
--             payment_intent; what it credited × refunded / charged (all of it for a full refund,
--             even if credits_usd differed from the price), minus what earlier refunds of it took,
--             is taken back — a 'refund' ledger row linked to the purchase row. The balance may go
--             negative; admission then refuses the account until it is topped up;
--   'record': nothing moves; p_outcome is recorded.
-- Balances change as add_credits() changes them (credits and version, so balances_notify tells
-- every instance's Redis within milliseconds), and Σ ledger = balance holds.
CREATE FUNCTION tollgate_stripe_event(p_id text, p_type text, p_created timestamptz, p_action text,
                                      p_outcome text, p_note text, p_account_ref text, p_amount numeric,
                                      p_charge_amount numeric, p_object_id text, p_payment_intent text,
                                      p_payload jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_account uuid;
  v_balance numeric;
  v_purchase stripe_events;
  v_purchase_row bigint;
  v_taken numeric;
  v_target numeric;
  v_delta numeric;
BEGIN
  -- A concurrent delivery of the same id waits here for the first one's commit, then conflicts.
  INSERT INTO stripe_events (id, type, created_at, account_ref, outcome, note, object_id, payment_intent, payload)
    VALUES (p_id, p_type, p_created, nullif(p_account_ref, ''), 'ignored', p_note, nullif(p_object_id, ''),
            nullif(p_payment_intent, ''), p_payload)
    ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    RETURN 'duplicate';
  END IF;

  IF p_action = 'credit' THEN
    SELECT id INTO v_account FROM users WHERE id::text = p_account_ref OR email = p_account_ref LIMIT 1;
    IF v_account IS NULL THEN
      UPDATE stripe_events SET outcome = 'unknown_account', amount = p_amount,
             note = 'no account with this id or email' WHERE id = p_id;
      RETURN 'unknown_account';
    END IF;
    INSERT INTO balances (user_id) VALUES (v_account) ON CONFLICT (user_id) DO NOTHING;
    UPDATE balances SET credits = credits + p_amount, version = version + 1, updated_at = now()
      WHERE user_id = v_account RETURNING credits INTO v_balance;
    INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, description, stripe_event_id)
      VALUES (v_account, p_amount, v_balance, 'purchase', 'Stripe ' || coalesce(nullif(p_object_id, ''), p_id), p_id);
    UPDATE stripe_events SET outcome = 'credited', account = v_account, amount = p_amount WHERE id = p_id;
    RETURN 'credited';
  END IF;

  IF p_action = 'refund' THEN
    -- Locked: two refund events of one charge (cumulative amounts) take back one after the other.
    SELECT * INTO v_purchase FROM stripe_events
      WHERE payment_intent = p_payment_intent AND outcome = 'credited' AND account IS NOT NULL
      ORDER BY processed_at, id LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
      UPDATE stripe_events SET outcome = 'unmatched', note = 'no credited Checkout Session with this payment_intent'
        WHERE id = p_id;
      RETURN 'unmatched';
    END IF;
    SELECT coalesce(sum(amount), 0) INTO v_taken FROM stripe_events
      WHERE purchase_event_id = v_purchase.id AND outcome = 'refunded';
    IF p_charge_amount > 0 THEN
      v_target := round(v_purchase.amount * least(p_amount, p_charge_amount) / p_charge_amount, 6);
    ELSE
      v_target := least(p_amount, v_purchase.amount);
    END IF;
    v_delta := v_target - v_taken;
    IF v_delta <= 0 THEN
      UPDATE stripe_events SET purchase_event_id = v_purchase.id, account = v_purchase.account,
             note = 'already taken back by earlier refund events' WHERE id = p_id;
      RETURN 'ignored';
    END IF;
    SELECT id INTO v_purchase_row FROM credit_transactions WHERE stripe_event_id = v_purchase.id;
    INSERT INTO balances (user_id) VALUES (v_purchase.account) ON CONFLICT (user_id) DO NOTHING;
    UPDATE balances SET credits = credits - v_delta, version = version + 1, updated_at = now()
      WHERE user_id = v_purchase.account RETURNING credits INTO v_balance;
    INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, description,
                                     stripe_event_id, refund_of)
      VALUES (v_purchase.account, -v_delta, v_balance, 'refund',
              'Stripe refund ' || coalesce(nullif(p_object_id, ''), p_id), p_id, v_purchase_row);
    UPDATE stripe_events SET outcome = 'refunded', account = v_purchase.account, amount = v_delta,
           purchase_event_id = v_purchase.id WHERE id = p_id;
    RETURN 'refunded';
  END IF;

  UPDATE stripe_events SET outcome = p_outcome WHERE id = p_id;
  RETURN p_outcome;
END $$;
