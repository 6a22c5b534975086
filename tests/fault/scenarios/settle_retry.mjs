// Settles retried after the writer's commit, under load: Redis is kept busy by another client's
// script for 300 ms, 24 times. A settle batch Redis ran just before the busy script gets its
// answer only after it (Redis writes replies when its event-loop turn ends), past the 50 ms
// deadline: tollgate sends it again, and the usage writer meanwhile commits those requests and
// syncs them (sync.lua drops their pending charges). When the busy script ends, the retry and
// the sync run in either order. A retry that runs after the sync must change nothing: at rest
// pending is 0 and Redis' balance equals Postgres'.
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, load, statusCounts } from '../lib/client.mjs';
import { redis, sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';

const STALLS = 24;
const STALL_MS = 300;
const BUSY = "local t = redis.call('TIME') local t0 = t[1] * 1e6 + t[2] " +
  "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - t0 >= tonumber(ARGV[1]) return 1";

export default {
  name: 'settle_retry',
  about: `Redis busy ${STALLS} times for ${STALL_MS} ms under load: settles sent again, pending back to 0`,
  async run(report) {
    const ns = new Namespace('sr');
    await ns.setup();
    try {
      const acct = await ns.account({ dollars: '1000' });
      const stub = await startStub();
      const tg = await startTollgate({ upstreamUrl: stub.apiUrl });
      const model = ns.model();
      const ag = agent({ maxSockets: 32 });
      await stub.reset();
      const L = load({
        workers: 24,
        next: (w, n) => ({
          base: tg.url, key: acct.key, agent: ag, timeoutMs: 10_000,
          body: (w + n) % 2 ? chatBody(model, { chunks: 8, latencyMs: 30 }) : chatBody(model, { stream: true, chunks: 6, intervalMs: 10 }),
        }),
      });
      await sleep(1500);
      for (let i = 0; i < STALLS; ++i) {
        await redis('EVAL', BUSY, '0', String(STALL_MS * 1000));
        await sleep(200);
      }
      await sleep(1000);
      await L.stop();
      ag.destroy();
      const rows = await quiesce([tg], acct.id);
      await sleep(1500);  // the writer's sync, and settles sent again
      const upstream = await stub.requests();
      const st = await accountState(acct.id);

      report.figure('command', 'bash tests/fault/run.sh settle_retry');
      report.figure('statuses', statusCounts(L.results));
      report.figure('requests the upstream answered / usage rows', `${upstream} / ${rows}`);
      report.figure('money', describeState(st));
      report.figure('Redis pending entries at rest', `${st.redis.pendingCharges} (${usd(st.redis.pending)})`);
      report.check('0 usage records lost', rows === upstream, `${upstream - rows} of ${upstream} missing`);
      report.check('pending returns to 0', st.redis.pending === 0n && st.redis.pendingCharges === 0,
        `${st.redis.pendingCharges} entries, ${usd(st.redis.pending)}`);
      report.check("Redis' credits = Postgres, no hold left", st.redis.cached && st.redis.credits === st.credits && st.redis.holds === 0 && st.redis.held === 0n,
        describeState(st));
      report.check('conservation: credits = Σ ledger; Σ usage ledger = Σ usage_logs charges', st.conserved && st.usageMatches, describeState(st));
    } finally {
      await ns.drop();
    }
  },
};
