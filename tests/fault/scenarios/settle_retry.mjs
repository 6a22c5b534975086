// Settles retried across Redis stalls: three stalls of 400 ms (SIGSTOP, more than two 50 ms
// deadlines: connections are dropped, settle batches get no answer and are sent again) under
// load, while the usage writer commits and syncs. A settle that reaches Redis after the
// writer's sync of the same request must change nothing: at rest pending is 0 and Redis'
// balance equals Postgres'.
import { Namespace, accountState, describeState, usd } from '../lib/accounts.mjs';
import { agent, chatBody, load, statusCounts } from '../lib/client.mjs';
import { sleep, startStub, startTollgate } from '../lib/procs.mjs';
import { quiesce } from './kill9.mjs';
import { stallRedis } from './redis_stall.mjs';

const STALLS = 3;
const STALL_MS = 400;

export default {
  name: 'settle_retry',
  about: `${STALLS} Redis stalls of ${STALL_MS} ms under load: settles sent again, pending back to 0`,
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
        await stallRedis(STALL_MS);
        await sleep(800);
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
