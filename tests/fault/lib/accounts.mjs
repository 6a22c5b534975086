// Accounts, keys, prices and the money invariants (shared/DESIGN.md): conservation in
// PostgreSQL, exactly one usage row and ledger row per request, Redis' balance cache = Postgres.
// Money is BigInt micro-dollars (1e-6 USD), never a JS number.
import { lit, psql, rand, redis, tollgateCli } from './procs.mjs';

/** "1.234567" / "-5" → BigInt micros (throws below 1e-6). */
export function toMicros(text) {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(String(text).trim());
  if (!m) throw new Error(`not a decimal: ${text}`);
  const frac = (m[3] || '').padEnd(6, '0');
  if (/[1-9]/.test(frac.slice(6))) throw new Error(`${text} has digits below 1e-6`);
  const v = BigInt(m[2]) * 1_000_000n + BigInt(frac.slice(0, 6));
  return m[1] === '-' ? -v : v;
}
/** BigInt micros → "$1.234567". */
export function usd(micros) {
  const neg = micros < 0n;
  const a = neg ? -micros : micros;
  return `${neg ? '-' : ''}$${a / 1_000_000n}.${(a % 1_000_000n).toString().padStart(6, '0')}`;
}

/**
 * A model namespace for one scenario: `ns/<name>` models priced at 0.000001 / 0.000002 USD per
 * token with a 25 % markup rule, and accounts created under it (removed by drop()).
 */
export class Namespace {
  constructor(label) {
    this.ns = `fault${label}${rand(3)}`;
    this.emails = [];
  }
  model(name = 'small') { return `${this.ns}/${name}`; }
  async setup(models = ['small'], { prompt = '0.000001', completion = '0.000002' } = {}) {
    for (const m of models) await tollgateCli('prices', 'set', this.model(m), prompt, completion, '--context-length', '8192');
    await psql(`INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, is_active, priority)
                VALUES (${lit(`${this.ns}/*`)}, 25, 0, true, 1000)`);
  }
  /** An account with `dollars` (decimal string), `keys` keys and no rate limits: {id, keys}. */
  async account({ dollars = '100', keys = 1 } = {}) {
    const email = `${this.ns}-${rand(3)}@fault.tollgate.test`;
    this.emails.push(email);
    const id = (await tollgateCli('accounts', 'create', email)).stdout.trim();
    if (toMicros(dollars) !== 0n) await tollgateCli('credits', 'add', id, dollars, '--note', 'fault suite');
    // Unlimited windows: these scenarios are about faults, not about rate limits.
    await psql(`UPDATE rate_limits SET requests_per_minute = 0, requests_per_hour = 0, requests_per_day = 0
                WHERE user_id = ${lit(id)}`);
    const out = [];
    for (let i = 0; i < keys; ++i) {
      const { stdout, stderr } = await tollgateCli('keys', 'create', id, '--name', `fault${i}`);
      out.push({ key: stdout.trim(), keyId: /key id ([0-9a-f-]{36})/.exec(stderr)[1] });
    }
    return { id, email, keys: out, key: out[0]?.key };
  }
  /** tollgate_price(model, prompt, completion).charge_usd in micros. */
  async charge(model, prompt, completion) {
    return toMicros(await psql(`SELECT charge_usd::text FROM tollgate_price(${lit(model)}, ${prompt}, ${completion})`));
  }
  async drop() {
    await psql(`DELETE FROM pricing_rules WHERE model_pattern = ${lit(`${this.ns}/*`)}`);
    await psql(`DELETE FROM model_prices WHERE model LIKE ${lit(`${this.ns}/%`)}`);
    if (this.emails.length) await psql(`DELETE FROM users WHERE email IN (${this.emails.map(lit).join(',')})`);
  }
}

/**
 * Money figures of one account, from PostgreSQL and Redis. Invariant checks read these:
 * conserved (credits = Σ ledger), usageMatches (Σ usage ledger = −Σ usage_logs.credits_deducted),
 * duplicates (request ids with more than one usage ledger row), Redis credits/held/pending/holds.
 */
export async function accountState(id) {
  const row = JSON.parse(await psql(`SELECT json_build_object(
    'credits', (SELECT credits::text FROM balances WHERE user_id = ${lit(id)}),
    'ledger', (SELECT coalesce(sum(amount), 0)::text FROM credit_transactions WHERE user_id = ${lit(id)}),
    'usage_ledger', (SELECT coalesce(sum(amount), 0)::text FROM credit_transactions
                     WHERE user_id = ${lit(id)} AND transaction_type = 'usage'),
    'usage_ledger_rows', (SELECT count(*) FROM credit_transactions WHERE user_id = ${lit(id)} AND transaction_type = 'usage'),
    'charged', (SELECT coalesce(sum(credits_deducted), 0)::text FROM usage_logs WHERE user_id = ${lit(id)}),
    'charged_rows', (SELECT count(*) FROM usage_logs WHERE user_id = ${lit(id)} AND credits_deducted > 0),
    'rows', (SELECT count(*) FROM usage_logs WHERE user_id = ${lit(id)}),
    'duplicates', (SELECT count(*) FROM (SELECT request_id FROM credit_transactions
                   WHERE user_id = ${lit(id)} AND transaction_type = 'usage'
                   GROUP BY request_id HAVING count(*) > 1) d),
    'statuses', (SELECT json_object_agg(status, n) FROM (SELECT status, count(*) n FROM usage_logs
                 WHERE user_id = ${lit(id)} GROUP BY status) s))`));
  const s = {
    credits: toMicros(row.credits), ledger: toMicros(row.ledger), usageLedger: toMicros(row.usage_ledger),
    usageLedgerRows: Number(row.usage_ledger_rows), charged: toMicros(row.charged),
    chargedRows: Number(row.charged_rows), rows: Number(row.rows), duplicates: Number(row.duplicates),
    statuses: row.statuses || {},
  };
  s.conserved = s.credits === s.ledger;
  s.usageMatches = -s.usageLedger === s.charged && s.usageLedgerRows === s.rows;  // one ledger row per usage row
  const k = `tg:{${id}}`;
  const bal = await redis('HGETALL', `${k}:bal`);
  const h = {};
  for (let i = 0; i + 1 < bal.length; i += 2) h[bal[i]] = bal[i + 1];
  s.redis = {
    cached: h.credits !== undefined,
    credits: h.credits !== undefined ? BigInt(h.credits) : null,
    held: BigInt(h.held || 0), pending: BigInt(h.pending || 0),
    holds: Number((await redis('ZCARD', `${k}:holds`))[0]),
    holdAmounts: Number((await redis('HLEN', `${k}:hamt`))[0]),
    pendingCharges: Number((await redis('HLEN', `${k}:pend`))[0]),
  };
  s.redisAgrees = !s.redis.cached || (s.redis.credits === s.credits && s.redis.pending === 0n);
  return s;
}

/** One line: "credits $x = ledger $y; Σ usage $z over n rows; Redis credits …". */
export function describeState(s) {
  const r = s.redis;
  return `PG credits ${usd(s.credits)} (ledger ${usd(s.ledger)}${s.conserved ? ', equal' : ', DIFFERENT'}); ` +
    `usage rows ${s.rows}, charged ${usd(s.charged)} (ledger usage ${usd(-s.usageLedger)}${s.usageMatches ? ', equal' : ', DIFFERENT'}); ` +
    `Redis ${r.cached ? `credits ${usd(r.credits)} held ${usd(r.held)} pending ${usd(r.pending)} holds ${r.holds}` : 'not cached'}`;
}
