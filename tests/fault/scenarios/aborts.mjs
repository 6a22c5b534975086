// Client aborts: 100 streams, each dropped by its client after 3 content chunks. Each is billed
// once (one usage row, status client_aborted, one ledger row) and no hold is left in Redis.
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, send, statusCounts } from '../lib/client.mjs';
import { lit, psql, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const ABORTS = 100;
const READ_CHUNKS = 3;

export default {
  name: 'aborts',
  about: `${ABORTS} streams aborted by their clients after ${READ_CHUNKS} chunks`,
  async run(report) {
    const ns = new Namespace('ab');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '100' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const model = ns.model();
      await stub.reset();
      // 40 chunks 25 ms apart (1 s): the client leaves after the 3rd. 10 at a time.
      const body = chatBody(model, { stream: true, maxTokens: 64, chunks: 40, intervalMs: 25 });
      const res = [];
      const aborted = [];
      const ag = agent({ maxSockets: 10 });
      let started = 0;
      await Promise.all(Array.from({ length: 10 }, async () => {
        while (started < ABORTS) {
          ++started;
          for (let attempt = 0; attempt < 3; ++attempt) {  // a refusal (e.g. 503) is tried again
            const r = await send({ base: tg.url, key: acct.key, agent: ag, body, abortAfterEvents: READ_CHUNKS, timeoutMs: 10_000 });
            res.push(r);
            if (r.aborted) { aborted.push(r); break; }
          }
        }
      }));
      ag.destroy();
      const rows = await quiesce([tg], acct.id);
      const upstream = await stub.requests();
      const st = await accountState(acct.id);
      const ids = aborted.map((r) => r.requestId).filter(Boolean);
      const per = ids.length ? JSON.parse(await psql(`SELECT coalesce(json_agg(x), '[]') FROM (
          SELECT u.request_id, u.status, u.completion_tokens, u.credits_deducted::text AS charged,
                 (SELECT count(*) FROM usage_logs v WHERE v.request_id = u.request_id) AS rows,
                 (SELECT count(*) FROM credit_transactions c WHERE c.request_id = u.request_id
                    AND c.transaction_type = 'usage') AS ledger
          FROM usage_logs u WHERE u.request_id IN (${ids.map(lit).join(',')})) x`)) : [];
      const byStatus = {};
      for (const p of per) byStatus[p.status] = (byStatus[p.status] || 0) + 1;
      const tokens = per.map((p) => p.completion_tokens).sort((x, y) => x - y);
      const dist = {};
      for (const t of tokens) dist[t] = (dist[t] || 0) + 1;

      report.figure('command', 'bash tests/fault/run.sh aborts');
      report.figure('client requests', `${res.length}: ${statusCounts(res)}; ${aborted.length} aborted after ${READ_CHUNKS} chunks`);
      report.figure('usage rows of the aborted requests, by status', JSON.stringify(byStatus));
      report.figure(`completion tokens billed (client read ${READ_CHUNKS})`, (Object.entries(dist).map(([t, n]) => `${t} tokens ×${n}`).join(', ') || 'none') +
        ' (one token per content chunk delivered, i.e. written to the client\'s socket before it closed)');
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows}`);
      report.figure('money', describeState(st));
      report.check(`${ABORTS} aborted mid-stream`, aborted.length === ABORTS && ids.length === ABORTS, `${aborted.length} aborted, ${ids.length} with a request id`);
      report.check('each has exactly one usage row, status client_aborted',
        per.length === ids.length && per.every((p) => p.rows === 1 && p.status === 'client_aborted'),
        `${per.length} rows for ${ids.length} ids; ${JSON.stringify(byStatus)}`);
      report.check('each is billed once (one usage ledger row, charge > 0)',
        per.every((p) => p.ledger === 1 && p.charged !== '0.000000'), `${per.filter((p) => p.ledger === 1).length} with one ledger row`);
      report.check('no hold left in Redis', st.redis.holds === 0 && st.redis.held === 0n && st.redis.holdAmounts === 0,
        `${st.redis.holds} holds, ${usd(st.redis.held)} held`);
      report.check('every upstream request recorded', rows === upstream, `${rows} rows, ${upstream} upstream`);
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
      report.check("Redis' balance = Postgres", st.redisAgrees, `Redis ${usd(st.redis.credits ?? 0n)} pending ${usd(st.redis.pending)} vs PG ${usd(st.credits)}`);
    } finally {
      await ns.drop();
    }
  },
};
