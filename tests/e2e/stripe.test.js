// Stripe top-ups (issue 14, part 1): POST /webhooks/stripe, signed with the official `stripe`
// package (stripe.webhooks.generateTestHeaderString) and each payload cross-checked with
// stripe.webhooks.constructEvent. Two tollgate instances share Redis and Postgres; a top-up must
// be spendable on both within 1 s, replays credit once, refunds take the money back.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import Stripe from 'stripe';

import { lit, psql, psqlJson, randomSuffix, readResponse, sleep, toMicros, useHarness } from './harness.js';

const S1 = `whsec_${randomSuffix(16)}`;
const S2 = `whsec_${randomSuffix(16)}`; // the second (rolled) secret
const h = useHarness({ env: { TOLLGATE_STRIPE_WEBHOOK_SECRETS: `${S1}, ${S2}` } });
h.watch(S1); // every child's whole output is searched for the secrets (checked by the last test)
h.watch(S2);
const stripe = new Stripe('sk_test_tollgate_e2e_never_used'); // only its webhook helpers, no network
const exec = promisify(execFile);
const SERVICES = fileURLToPath(new URL('../../deploy/local/services.sh', import.meta.url));
const nowS = () => Math.floor(Date.now() / 1000);

let second; // the second instance, started by the first test that needs it (after the harness')
async function startSecond() {
  second ??= await h.startProxy({ name: 'tollgate-2', env: { TOLLGATE_STRIPE_WEBHOOK_SECRETS: `${S1},${S2}` } });
}

/** A checkout.session.completed event as Stripe sends it (the fields tollgate reads). */
function checkoutEvent({ account, cents = 500, currency = 'usd', credits, type = 'checkout.session.completed',
                         pi = `pi_${randomSuffix(8)}` } = {}) {
  return {
    id: `evt_${randomSuffix(12)}`, object: 'event', api_version: '2025-10-29.clover', created: nowS(),
    livemode: false, pending_webhooks: 1, type,
    data: { object: {
      id: `cs_test_${randomSuffix(12)}`, object: 'checkout.session', mode: 'payment', payment_status: 'paid',
      status: 'complete', amount_total: cents, amount_subtotal: cents, currency,
      client_reference_id: account ?? null, metadata: credits ? { credits_usd: credits } : {}, payment_intent: pi,
    } },
  };
}

/** A charge.refunded event: amount_refunded is cumulative over the charge's refunds. */
function refundEvent({ pi, cents = 500, refunded = cents, currency = 'usd' }) {
  return {
    id: `evt_${randomSuffix(12)}`, object: 'event', created: nowS(), livemode: false, type: 'charge.refunded',
    data: { object: { id: `ch_${pi}`, object: 'charge', amount: cents, amount_refunded: refunded, refunded: refunded === cents,
                      currency, payment_intent: pi, status: 'succeeded' } },
  };
}

/**
 * POSTs an event to /webhooks/stripe signed with `secret` at `timestamp` (Unix s). Unless told
 * otherwise (`expectValid: false`), first checks with stripe.webhooks.constructEvent that Stripe's
 * own library accepts the payload and header, so the test's deliveries are real Stripe ones.
 */
async function deliver(url, event, { secret = S1, timestamp = nowS(), payload, header, expectValid = true } = {}) {
  payload ??= JSON.stringify(event, null, 2); // Stripe sends pretty-printed JSON
  header ??= stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp });
  if (expectValid) assert.equal(stripe.webhooks.constructEvent(payload, header, secret).id, event.id);
  const res = await fetch(`${url}/webhooks/stripe`, {
    method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8', 'stripe-signature': header }, body: payload,
  });
  return readResponse(res);
}

async function chat(url, key) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: h.model, max_tokens: 1000, messages: [{ role: 'user', content: 'top-up?' }] }),
  });
  return readResponse(res);
}

const eventRow = (id) => psqlJson(
  `SELECT json_build_object('outcome', outcome, 'account', account, 'amount', amount::text, 'type', type,
                            'purchase', purchase_event_id) FROM stripe_events WHERE id = ${lit(id)}`);
const stripeLedger = async (user) => (await psqlJson(
  `SELECT json_agg(json_build_object('id', id, 'type', transaction_type, 'amount', amount::text,
                                     'event', stripe_event_id, 'refund_of', refund_of) ORDER BY id)
   FROM credit_transactions WHERE user_id = ${lit(user)} AND stripe_event_id IS NOT NULL`)) || [];

/** balance = Σ ledger for the account (micro-dollars); returns the balance. */
async function conserved(user) {
  const balance = await h.balance(user);
  const ledger = toMicros(await psql(`SELECT coalesce(sum(amount), 0)::text FROM credit_transactions WHERE user_id = ${lit(user)}`));
  assert.equal(balance, ledger, 'balance != Σ ledger');
  return balance;
}

/** Polls `fn` (every 20 ms, up to `ms`) until it returns true; returns the ms it took, or null. */
async function within(ms, fn) {
  const t0 = Date.now();
  while (Date.now() - t0 <= ms) {
    if (await fn()) return Date.now() - t0;
    await sleep(20);
  }
  return null;
}

test('a paid Checkout Session credits once and is spendable on 2 instances within 1 s', async (t) => {
  await startSecond();
  const acct = await h.newAccount({ usd: '0', label: 'topup' });
  // Both instances have the empty balance cached in Redis: the top-up must reach them by NOTIFY.
  for (const url of [h.url, second.url]) assert.equal((await chat(url, acct.key)).status, 402);
  const ev = checkoutEvent({ account: acct.id, cents: 500 });
  const r = await deliver(h.url, ev);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { received: true });
  // Both instances polled at once, from the webhook's 200.
  const took = await Promise.all(
    [h.url, second.url].map((url) => within(1000, async () => (await chat(url, acct.key)).status === 200)));
  assert.ok(took.every((ms) => ms !== null), `not spendable within 1 s on every instance: ${took}`);
  t.diagnostic(`spendable after ${took[0]} ms (instance 1) and ${took[1]} ms (instance 2)`);
  assert.deepEqual(await eventRow(ev.id), { outcome: 'credited', account: acct.id, amount: '5.000000',
                                            type: ev.type, purchase: null });
  const ledger = await stripeLedger(acct.id);
  assert.equal(ledger.length, 1);
  assert.deepEqual({ ...ledger[0], id: 0 }, { id: 0, type: 'purchase', amount: '5.000000', event: ev.id, refund_of: null });
  const balance = await conserved(acct.id);
  assert.ok(balance > 4_990_000n && balance < 5_000_000n, `balance ${balance}: 5 USD minus two small requests`);
});

test('10 concurrent deliveries of one event (on 2 instances) credit once', async () => {
  await startSecond();
  const acct = await h.newAccount({ usd: '0', label: 'replay' });
  const ev = checkoutEvent({ account: acct.email, cents: 1234 }); // named by email this time
  const payload = JSON.stringify(ev, null, 2);
  const header = stripe.webhooks.generateTestHeaderString({ payload, secret: S1 });
  const answers = await Promise.all(
    Array.from({ length: 10 }, (_, i) => deliver(i % 2 ? second.url : h.url, ev, { payload, header })));
  for (const a of answers) {
    assert.equal(a.status, 200, a.text);
    assert.deepEqual(a.json, { received: true });
  }
  const ledger = await stripeLedger(acct.id);
  assert.equal(ledger.length, 1, JSON.stringify(ledger));
  assert.equal(ledger[0].amount, '12.340000');
  assert.equal(await conserved(acct.id), 12_340_000n);
  assert.equal(await psql(`SELECT count(*) FROM stripe_events WHERE id = ${lit(ev.id)}`), '1');
  // And later, one more replay (Stripe's retry): 200, nothing more.
  assert.equal((await deliver(h.url, ev)).status, 200);
  assert.equal(await conserved(acct.id), 12_340_000n);
});

test('wrong secret, tampered body, stale or future timestamp, no signature: 400 and nothing recorded', async () => {
  const acct = await h.newAccount({ usd: '0', label: 'bad' });
  const cases = [];
  const ev1 = checkoutEvent({ account: acct.id });
  cases.push(['wrong secret', ev1, await deliver(h.url, ev1, { secret: `whsec_${randomSuffix(16)}` , expectValid: false }), 'invalid_signature']);
  const ev2 = checkoutEvent({ account: acct.id });
  const signed = JSON.stringify(ev2, null, 2);
  const header2 = stripe.webhooks.generateTestHeaderString({ payload: signed, secret: S1 });
  const tampered = signed.replace('"amount_total": 500', '"amount_total": 500000');
  assert.notEqual(tampered, signed);
  assert.throws(() => stripe.webhooks.constructEvent(tampered, header2, S1), /No signatures found/);
  cases.push(['tampered body', ev2, await deliver(h.url, ev2, { payload: tampered, header: header2, expectValid: false }), 'invalid_signature']);
  const ev3 = checkoutEvent({ account: acct.id });
  const old = nowS() - 301;
  const p3 = JSON.stringify(ev3);
  assert.throws(() => stripe.webhooks.constructEvent(p3, stripe.webhooks.generateTestHeaderString({ payload: p3, secret: S1, timestamp: old }), S1),
                /tolerance/);
  cases.push(['301 s old', ev3, await deliver(h.url, ev3, { payload: p3, timestamp: old, expectValid: false }), 'timestamp_out_of_tolerance']);
  const ev4 = checkoutEvent({ account: acct.id });
  // (Stripe's library checks only the past; tollgate refuses the future too.)
  cases.push(['301 s ahead', ev4, await deliver(h.url, ev4, { timestamp: nowS() + 301, expectValid: false }), 'timestamp_out_of_tolerance']);
  const ev5 = checkoutEvent({ account: acct.id });
  cases.push(['no header', ev5, await deliver(h.url, ev5, { header: '', expectValid: false }), 'missing_signature']);
  const ev6 = checkoutEvent({ account: acct.id });
  const p6 = JSON.stringify(ev6);
  cases.push(['v0 only', ev6, await deliver(h.url, ev6, {
    payload: p6, expectValid: false,
    header: stripe.webhooks.generateTestHeaderString({ payload: p6, secret: S1 }).replace(',v1=', ',v0=') }), 'invalid_signature']);
  for (const [what, ev, r, code] of cases) {
    assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
    assert.equal(r.json?.error?.code, code, `${what}: ${r.text}`);
    assert.ok(r.json.error.message.length > 10, what);
    assert.equal(await eventRow(ev.id), null, `${what}: recorded`);
  }
  // A valid signature over a body that is not JSON: 400 too.
  const notJson = await deliver(h.url, { id: 'x' }, { payload: 'not json', expectValid: false });
  assert.equal(notJson.status, 400, notJson.text);
  assert.equal(notJson.json?.error?.code, 'invalid_json');
  assert.equal(await conserved(acct.id), 0n);
  // Just inside the tolerance, both ways: accepted.
  for (const skew of [-295, 295]) {
    const ev = checkoutEvent({ account: acct.id, cents: 100 });
    const r = await deliver(h.url, ev, { timestamp: nowS() + skew });
    assert.equal(r.status, 200, `skew ${skew}: ${r.text}`);
  }
  assert.equal(await conserved(acct.id), 2_000_000n);
});

test('secret rotation: an event signed with the second secret is accepted', async () => {
  await startSecond();
  const acct = await h.newAccount({ usd: '0', label: 'rotate' });
  const ev = checkoutEvent({ account: acct.id, credits: '7.5', cents: 500 }); // metadata.credits_usd wins
  const r = await deliver(second.url, ev, { secret: S2 });
  assert.equal(r.status, 200, r.text);
  assert.equal(await conserved(acct.id), 7_500_000n);
  // During a roll Stripe sends one v1 per secret: a header with both verifies.
  const ev2 = checkoutEvent({ account: acct.id, cents: 100 });
  const payload = JSON.stringify(ev2);
  const t = nowS();
  const v1 = (s) => stripe.webhooks.generateTestHeaderString({ payload, secret: s, timestamp: t }).split(',v1=')[1];
  const r2 = await deliver(h.url, ev2, { payload, header: `t=${t},v1=${v1(`whsec_${randomSuffix(8)}`)},v1=${v1(S2)}`, expectValid: false });
  assert.equal(r2.status, 200, r2.text);
  assert.equal(await conserved(acct.id), 8_500_000n);
});

test('refunds take the money back, cumulatively, linked to the purchase; a negative balance is refused', async () => {
  await startSecond();
  const acct = await h.newAccount({ usd: '0', label: 'refund' });
  const pi = `pi_${randomSuffix(10)}`;
  const buy = checkoutEvent({ account: acct.id, cents: 500, pi });
  assert.equal((await deliver(h.url, buy)).status, 200);
  assert.notEqual(await within(1000, async () => (await chat(second.url, acct.key)).status === 200), null);
  const spent = 5_000_000n - (await conserved(acct.id));
  assert.ok(spent > 0n);
  const partial = refundEvent({ pi, cents: 500, refunded: 200 });
  assert.equal((await deliver(h.url, partial)).status, 200);
  assert.equal(await conserved(acct.id), 3_000_000n - spent);
  const full = refundEvent({ pi, cents: 500, refunded: 500 }); // cumulative: takes 3 USD more
  assert.equal((await deliver(second.url, full)).status, 200);
  assert.equal((await deliver(h.url, full)).status, 200); // replay: nothing more
  assert.equal((await deliver(h.url, partial)).status, 200); // late replay of the first: nothing more
  assert.equal(await conserved(acct.id), -spent);
  const ledger = await stripeLedger(acct.id);
  assert.deepEqual(ledger.map((r) => [r.type, r.amount, r.event, r.refund_of]), [
    ['purchase', '5.000000', buy.id, null],
    ['refund', '-2.000000', partial.id, ledger[0].id],
    ['refund', '-3.000000', full.id, ledger[0].id],
  ]);
  assert.equal((await eventRow(full.id)).purchase, buy.id);
  // An older refund event arriving after a larger one takes nothing.
  const stale = refundEvent({ pi, cents: 500, refunded: 300 });
  assert.equal((await deliver(h.url, stale)).status, 200);
  assert.equal((await eventRow(stale.id)).outcome, 'ignored');
  // Negative now: both instances refuse the account (NOTIFY → Redis).
  for (const url of [h.url, second.url]) {
    let last;
    const ms = await within(1000, async () => (last = await chat(url, acct.key)).status === 402);
    assert.notEqual(ms, null, `${url}: still ${last?.status} 1 s after the refund`);
  }
  // A refund of a charge tollgate never credited: recorded, nothing moves.
  const foreign = refundEvent({ pi: `pi_${randomSuffix(10)}` });
  assert.equal((await deliver(h.url, foreign)).status, 200);
  assert.equal((await eventRow(foreign.id)).outcome, 'unmatched');
  assert.equal(await conserved(acct.id), -spent);
});

test('events tollgate does not act on: 200 and recorded, nothing credited', async () => {
  const acct = await h.newAccount({ usd: '0', label: 'other' });
  const unknownType = { id: `evt_${randomSuffix(12)}`, object: 'event', type: 'customer.created', created: nowS(),
                        data: { object: { id: 'cus_1', object: 'customer' } } };
  const eur = checkoutEvent({ account: acct.id, currency: 'eur' });
  const unpaid = checkoutEvent({ account: acct.id });
  unpaid.data.object.payment_status = 'unpaid';
  const invoice = { id: `evt_${randomSuffix(12)}`, object: 'event', type: 'invoice.paid', created: nowS(),
                    data: { object: { id: 'in_1', object: 'invoice', amount_paid: 2000, currency: 'usd' } } };
  const nobody = checkoutEvent({ account: `nobody-${randomSuffix(4)}@e2e.tollgate.test` });
  const expected = [[unknownType, 'unhandled'], [eur, 'unhandled'], [unpaid, 'ignored'], [invoice, 'unhandled'],
                    [nobody, 'unknown_account']];
  for (const [ev, outcome] of expected) {
    const r = await deliver(h.url, ev);
    assert.equal(r.status, 200, `${ev.type}: ${r.text}`);
    assert.deepEqual(r.json, { received: true });
    const row = await eventRow(ev.id);
    assert.equal(row?.outcome, outcome, `${ev.type} ${ev.data.object.currency ?? ''}`);
  }
  // The async path: the unpaid session's money arrives later and is credited then.
  const later = checkoutEvent({ account: acct.id, type: 'checkout.session.async_payment_succeeded' });
  assert.equal((await deliver(h.url, later)).status, 200);
  assert.equal(await conserved(acct.id), 5_000_000n);
});

test('the route: 413 above 1 MiB, 404 without secrets', async () => {
  const big = checkoutEvent({ account: h.account.id });
  big.data.object.metadata = { padding: 'x'.repeat(1 << 20) };
  const r = await deliver(h.url, big);
  assert.equal(r.status, 413, r.text);
  const off = await h.startProxy({ name: 'tollgate-no-stripe', env: { TOLLGATE_STRIPE_WEBHOOK_SECRETS: '' } });
  const r2 = await deliver(off.url, checkoutEvent({ account: h.account.id }));
  assert.equal(r2.status, 404, r2.text);
  await off.child.stop();
});

test('PostgreSQL down: 503 (Stripe retries), then the retry credits once', async () => {
  await startSecond();
  const services = process.env.TOLLGATE_SERVICES_DIR;
  assert.ok(services, 'TOLLGATE_SERVICES_DIR is not set: run through ctest or tests/run.sh');
  const acct = await h.newAccount({ usd: '0', label: 'pgdown' });
  const ev = checkoutEvent({ account: acct.id, cents: 300 });
  const payload = JSON.stringify(ev, null, 2);
  await exec('bash', [SERVICES, 'stop-pg', services]);
  let down;
  try {
    down = await deliver(h.url, ev, { payload });
  } finally {
    await exec('bash', [SERVICES, 'start-pg', services]);
  }
  assert.equal(down.status, 503, down.text);
  assert.equal(down.json?.error?.code, 'database_unavailable');
  // Stripe's retry (a fresh signature, the same event): credited once Postgres answers again.
  let last;
  const ms = await within(15_000, async () => (last = await deliver(h.url, ev, { payload })).status === 200);
  assert.notEqual(ms, null, `no 200 within 15 s after Postgres came back: ${last?.status} ${last?.text}`);
  assert.equal((await deliver(second.url, ev, { payload })).status, 200);
  assert.equal(await conserved(acct.id), 3_000_000n);
  assert.equal((await stripeLedger(acct.id)).length, 1);
});

test('no secret ever appears in the output of any process', () => {
  assert.deepEqual(h.leakedTo(S1), []);
  assert.deepEqual(h.leakedTo(S2), []);
});
