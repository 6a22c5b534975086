// The fault suite's driver: runs the named scenarios (all by default) one after the other
// against the PostgreSQL and Redis that run.sh started, prints each one's figures and
// invariants as a table, and exits 1 if any invariant failed (2 if a scenario could not run).
//
//   node tests/fault/fault.mjs [--list] [scenario...]
import { cleanupTmp, stopAll } from './lib/procs.mjs';
import { Report } from './lib/report.mjs';
import aborts from './scenarios/aborts.mjs';
import emfile from './scenarios/emfile.mjs';
import hostile from './scenarios/hostile.mjs';
import hostileClient from './scenarios/hostile_client.mjs';
import kill9 from './scenarios/kill9.mjs';
import overspend from './scenarios/overspend.mjs';
import pgDown from './scenarios/pg_down.mjs';
import redisRestart from './scenarios/redis_restart.mjs';
import redisStall from './scenarios/redis_stall.mjs';
import settleRetry from './scenarios/settle_retry.mjs';
import sigterm from './scenarios/sigterm.mjs';
import slowloris from './scenarios/slowloris.mjs';

const all = [kill9, sigterm, pgDown, redisRestart, redisStall, settleRetry, overspend, aborts, slowloris, hostile, hostileClient, emfile];

const args = process.argv.slice(2);
if (args.includes('--list') || args.includes('-h') || args.includes('--help')) {
  for (const s of all) console.log(`${s.name.padEnd(14)} ${s.about}`);
  process.exit(0);
}
const unknown = args.filter((a) => !all.some((s) => s.name === a));
if (unknown.length) {
  console.error(`unknown scenario(s): ${unknown.join(', ')}; known: ${all.map((s) => s.name).join(', ')}`);
  process.exit(2);
}
const chosen = args.length ? all.filter((s) => args.includes(s.name)) : all;

const reports = [];
let broken = false;
for (const s of chosen) {
  const report = new Report(s.name, s.about);
  const t0 = Date.now();
  process.stderr.write(`fault: ${s.name}: ${s.about}\n`);
  try {
    await s.run(report);
  } catch (e) {
    broken = true;
    report.error(e);
  } finally {
    await stopAll().catch(() => {});
    cleanupTmp();
  }
  report.seconds = (Date.now() - t0) / 1000;
  report.print();
  reports.push(report);
}

console.log('\n== fault suite summary');
for (const r of reports) console.log(r.summaryLine());
const failed = reports.some((r) => r.failed());
process.exit(broken ? 2 : failed ? 1 : 0);
