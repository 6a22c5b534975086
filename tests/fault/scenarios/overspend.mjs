// Overspend race: 300 requests at once over 2 instances sharing Redis, against a balance that
// covers exactly 5 worst cases. No overspend (credits never below −overdraft = 0), and
// conservation holds.
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { chatBody, fmtMs, pct, send, statusCounts } from '../lib/client.mjs';
import { startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const REQUESTS = 300;
const COVERED = 5;
const MAX_TOKENS = 100;
const LATENCY_MS = 3000;

export default {
  name: 'overspend',
  about: `${REQUESTS} concurrent requests over 2 instances, balance for ${COVERED} worst cases`,
  async run(report) {
    const ns = new Namespace('os');
    await ns.setup();
    try {
      const model = ns.model();
      // The stub answers with exactly max_tokens completion tokens, 3 s late: every admission
      // happens while the first admitted requests still hold their worst case (a request
      // settled meanwhile frees hold − charge, and more may then be admitted, rightly).
      const body = chatBody(model, { maxTokens: MAX_TOKENS, chunks: MAX_TOKENS, latencyMs: LATENCY_MS });
      const bodyBytes = Buffer.byteLength(JSON.stringify(body));
      // Admission's worst case: every body byte a prompt token (+1), plus max_tokens.
      const worst = await ns.charge(model, bodyBytes + 1, MAX_TOKENS);
      const balance = worst * BigInt(COVERED);
      const acct = await ns.account({ dollars: (Number(balance) / 1e6).toFixed(6) });
      const stub = await startStub();
      const a = await startTollgate({ name: 'tollgate-a', upstreamUrl: stub.apiUrl });
      const b = await startTollgate({ name: 'tollgate-b', upstreamUrl: stub.apiUrl });
      await stub.reset();
      const start = await accountState(acct.id);
      // Every request on its own connection (no agent), fired together.
      const res = await Promise.all(Array.from({ length: REQUESTS }, (_, i) =>
        send({ base: i % 2 ? b.url : a.url, key: acct.key, agent: false, body, timeoutMs: 30_000 })));
      const rows = await quiesce([a, b], acct.id);
      const upstream = await stub.requests();
      const st = await accountState(acct.id);
      const ok = res.filter((r) => r.status === 200);
      const admittedLate = res.filter((r) => r.status !== 200 && r.ms >= LATENCY_MS).length;
      const spent = start.credits - st.credits;

      report.figure('command', 'bash tests/fault/run.sh overspend');
      report.figure('worst case per request (hold)', `${usd(worst)} (${bodyBytes + 1} prompt + ${MAX_TOKENS} completion tokens)`);
      report.figure('balance before', `${usd(start.credits)} = ${COVERED} worst cases; overdraft 0`);
      report.figure('responses', statusCounts(res));
      report.figure('200s per instance', `a ${res.filter((r, i) => i % 2 === 0 && r.status === 200).length}, b ${res.filter((r, i) => i % 2 === 1 && r.status === 200).length}`);
      report.figure('response time p50 / p99', `${fmtMs(pct(res.map((r) => r.ms), 0.5))} / ${fmtMs(pct(res.map((r) => r.ms), 0.99))}` +
        ` (upstream answers after ${LATENCY_MS} ms; refusals later than that: ${admittedLate})`);
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows}`);
      report.figure('spent', `${usd(spent)} over ${st.chargedRows} charged rows; balance after ${usd(st.credits)}`);
      report.figure('money', describeState(st));
      report.check(`at most ${COVERED} admitted while they all hold their worst case`, ok.length <= COVERED && admittedLate === 0,
        `${ok.length} × 200; ${admittedLate} refusals came after the first answers`);
      report.check('0 overspend: balance ≥ −overdraft (0)', st.credits >= 0n && spent <= start.credits, `balance after ${usd(st.credits)}`);
      report.check('every upstream request recorded once', rows === upstream && st.duplicates === 0, `${rows} rows, ${upstream} upstream, ${st.duplicates} duplicated`);
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("Redis' balance = Postgres, no hold left", st.redisAgrees && st.redis.holds === 0 && st.redis.held === 0n,
        `Redis ${usd(st.redis.credits ?? 0n)} held ${usd(st.redis.held)} pending ${usd(st.redis.pending)} vs PG ${usd(st.credits)}`);
    } finally {
      await ns.drop();
    }
  },
};
