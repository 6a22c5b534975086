// Hostile upstream (lib/hostile_upstream.mjs): garbage bodies, a stream that never ends, one
// that stalls, absurd and negative token counts, 30-digit and huge costs (with
// billing.cost_source = "upstream" on a second instance). Nothing crashes, overflows or goes
// negative; each case prints what was charged, against the hold, and why.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Namespace, accountState, toMicros, usd } from '../lib/accounts.mjs';
import { chatBody, fmtMs, send } from '../lib/client.mjs';
import { startHostile } from '../lib/hostile_upstream.mjs';
import { lit, psql, sleep, startTollgate } from '../lib/procs.mjs';

const MAX_TOKENS = 16;
// [mode, instance ('prices' | 'upstream' cost source), stream, client behaviour]
const CASES = [
  ['garbage', 'prices', false, {}],
  ['garbage_sse', 'prices', true, {}],
  ['endless', 'prices', true, { timeoutMs: 2000 }],  // the client gives up after 2 s
  ['stall', 'prices', true, { timeoutMs: 2000 }],
  ['flood', 'prices', true, { timeoutMs: 8000 }],  // read for up to 8 s
  ['tokens_1e9', 'prices', false, {}],
  ['tokens_1e12', 'prices', false, {}],
  ['negative', 'prices', false, {}],
  ['negative', 'upstream', false, {}],
  ['cost_30', 'upstream', false, {}],
  ['cost_1e300', 'upstream', false, {}],
];

function deadLetters(dirs) {
  const out = new Map();
  for (const d of dirs) {
    const f = join(d, 'dead-letter.jsonl');
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, 'utf8').split('\n').filter(Boolean)) {
      const x = JSON.parse(line);
      out.set(x.record?.request_id ?? x.record?.id, x);
    }
  }
  return out;
}

export default {
  name: 'hostile',
  about: 'hostile upstream: garbage, endless and stalled streams, 10^9/10^12/negative tokens, 30-digit and 1e300 costs',
  async run(report) {
    const ns = new Namespace('ho');
    const models = [...new Set(CASES.map((c) => c[0]))];
    await ns.setup(models);
    const up = await startHostile();
    try {
      const byPrices = await startTollgate({ name: 'tollgate-prices', upstreamUrl: up.apiUrl });
      const byUpstream = await startTollgate({ name: 'tollgate-upstream', upstreamUrl: up.apiUrl,
        config: '[billing]\ncost_source = "upstream"\n' });
      const results = [];
      for (const [mode, source, stream, how] of CASES) {
        const acct = await ns.account({ dollars: '10' });
        const body = chatBody(ns.model(mode), { stream, maxTokens: MAX_TOKENS });
        const hold = await ns.charge(ns.model(mode), Buffer.byteLength(JSON.stringify(body)) + 1, MAX_TOKENS);
        const tg = source === 'prices' ? byPrices : byUpstream;
        const logIndex = up.log.length;
        const r = await send({ base: tg.url, key: acct.key, agent: false, body, timeoutMs: how.timeoutMs ?? 10_000 });
        const left = performance.now();
        results.push({ mode, source, stream, acct, hold, r, left, upstream: () => up.log[logIndex] });
      }
      await sleep(2000);  // give tollgate time to drop the upstream of a client that left
      for (const tg of [byPrices, byUpstream]) await tg.settled(15_000).catch(() => {});
      await sleep(300);
      const dead = deadLetters([byPrices.journalDir, byUpstream.journalDir]);
      const alive = [byPrices, byUpstream].every((t) => t.child.exited === null);
      const cut = (byPrices.child.log.match(/upstream stream ended early: ([^\n]*)/g) || []).map((l) => l.replace(/.*: /, ''));

      report.figure('command', 'bash tests/fault/run.sh hostile');
      report.figure('prices', `each hostile model 0.000001 / 0.000002 USD per token, 25 % markup; max_tokens ${MAX_TOKENS}; each case its own $10 account`);
      const negatives = [];
      let unaccounted = 0;
      for (const c of results) {
        const row = c.r.requestId ? JSON.parse(await psql(`SELECT coalesce((SELECT json_build_object(
            'status', status, 'prompt', prompt_tokens, 'completion', completion_tokens,
            'cost', cost_usd::text, 'charged', credits_deducted::text)
          FROM usage_logs WHERE request_id = ${lit(c.r.requestId)}), 'null')`)) : null;
        const st = await accountState(c.acct.id);
        const u = c.upstream();
        const upClosed = u && Number.isFinite(u.closedAt) ? `upstream connection closed ${fmtMs(u.closedAt - c.left)} after the client's response ended` : 'upstream connection still open';
        const dl = c.r.requestId && dead.get(c.r.requestId);
        let what;
        if (row) {
          what = `row ${row.status}, tokens ${row.prompt}+${row.completion}, cost_usd ${row.cost}, charged ${row.charged}`;
          if (toMicros(row.cost) < 0n || toMicros(row.charged) < 0n || row.prompt < 0 || row.completion < 0) negatives.push(`${c.mode}/${c.source}: ${what}`);
        } else if (dl) {
          const why = String(dl.error).replace(/^query failed: ERROR:\s*/, '').split('\n')[0];
          what = `no row: dead-lettered (SQLSTATE ${dl.sqlstate}: ${why}); record: tokens ${dl.record?.prompt_tokens}+${dl.record?.completion_tokens}, credits_deducted ${dl.record?.credits_deducted}`;
        } else {
          what = 'no row yet';
          if (c.mode !== 'stall') ++unaccounted;
        }
        const charged = row ? toMicros(row.charged) : 0n;
        c.over = charged > c.hold;
        c.negativeBalance = st.credits < 0n;
        c.conserved = st.conserved && st.usageMatches;
        report.figure(`${c.mode} (cost source ${c.source}${c.stream ? ', stream' : ''})`,
          `client ${c.r.status || ''}${c.r.events ? `, ${c.r.events} chunks` : ''}${c.r.error ? `, then ${c.r.error}` : ''} (${fmtMs(c.r.ms)}); ${what}; hold ${usd(c.hold)}; ` +
          `balance $10 → ${usd(st.credits)}${st.redis.holds ? `; ${st.redis.holds} hold(s) left in Redis` : ''}${['endless', 'stall', 'flood'].includes(c.mode) ? `; ${upClosed}` : ''}`);
      }
      const flood = results.find((c) => c.mode === 'flood');
      if (flood) {
        const mib = (flood.r.events * (64 * 1024 + 150)) / (1 << 20);
        report.figure('flood: how the endless stream ended', `after ~${mib.toFixed(1)} MiB (${flood.r.events} events of 64 KiB) relayed; ` +
          `tollgate-prices logged "upstream stream ended early: ${cut.join('", "') || '?'}": a stream has no total size limit ` +
          '(one event ≤ upstream.max_event_bytes); it ran until the client left, and the charge stopped at the hold');
      }
      report.check('tollgate still running (both instances)', alive, [byPrices, byUpstream].map((t) => JSON.stringify(t.child.exited)).join(' '));
      report.check('nothing negative: tokens, cost_usd and charges ≥ 0', negatives.length === 0, negatives.join(' | ') || 'none',
        'proxy/wire.cpp takes negative token counts and costs as they come (fixed by issue10-billing: usage clamped to [0, 10^9], a negative cost not believed)');
      report.check('each finished case has a usage row or a dead-letter entry', unaccounted === 0, `${unaccounted} without either`);
      const over = results.filter((c) => c.over).map((c) => `${c.mode}/${c.source}`);
      report.check('charge ≤ the hold (worst case admitted)', over.length === 0, over.join(', ') || 'none',
        'issue 11: the charge is not capped by the hold; usage the upstream reports beyond max_tokens is billed as reported');
      const neg = results.filter((c) => c.negativeBalance).map((c) => `${c.mode}/${c.source}`);
      report.check('no balance below −overdraft (0)', neg.length === 0, neg.join(', ') || 'none',
        'issue 11: the charge is not capped by the hold');
      const notConserved = results.filter((c) => !c.conserved).map((c) => `${c.mode}/${c.source}`);
      report.check('conservation per account', notConserved.length === 0, notConserved.join(', ') || 'all');
      for (const c of results.filter((x) => ['endless', 'stall'].includes(x.mode))) {
        const u = c.upstream();
        const closedIn = u && Number.isFinite(u.closedAt) ? u.closedAt - c.left : Infinity;
        report.check(`${c.mode}: the upstream connection is dropped within 1 s of the client leaving`, closedIn <= 1000,
          Number.isFinite(closedIn) ? fmtMs(closedIn) : 'still open 2 s later',
          'proxy/forward.cpp notices a client that left only when it next writes to it: while the upstream is silent it waits up to upstream.idle_timeout_ms (300 s), holding the upstream connection, the hold and the request');
      }
    } finally {
      await up.close();
      await ns.drop();
    }
  },
};
