// What a scenario reports: figures (measured values, printed) and invariants (checks that pass
// or fail). A failing invariant may name its known cause ("issue 11: …"); it still fails the
// suite, the note says why.

export class Report {
  constructor(name, about) {
    this.name = name;
    this.about = about;
    this.figures = [];
    this.checks = [];
    this.errors = [];
    this.seconds = 0;
  }
  /** A measured value: label, value (string or number). */
  figure(label, value) {
    this.figures.push([label, String(value)]);
  }
  /** An invariant: `ok` boolean, `detail` what was seen, `known` the known cause if it fails. */
  check(label, ok, detail = '', known = '') {
    this.checks.push({ label, ok: !!ok, detail: String(detail), known });
    return ok;
  }
  error(e) {
    this.errors.push(e && e.stack ? e.stack : String(e));
  }
  failed() {
    return this.errors.length > 0 || this.checks.some((c) => !c.ok);
  }
  print() {
    const rows = [
      ...this.figures.map(([l, v]) => ['', l, v]),
      ...this.checks.map((c) => [c.ok ? 'PASS' : 'FAIL', c.label, c.detail + (!c.ok && c.known ? ` [cause: ${c.known}]` : '')]),
    ];
    const w0 = 4, w1 = Math.min(56, Math.max(10, ...rows.map((r) => r[1].length)));
    console.log(`\n== ${this.name} (${this.seconds.toFixed(1)} s): ${this.about}`);
    console.log(`${''.padEnd(w0)} | ${'figure / invariant'.padEnd(w1)} | value`);
    console.log(`${'-'.repeat(w0)}-+-${'-'.repeat(w1)}-+-${'-'.repeat(40)}`);
    for (const [s, l, v] of rows) console.log(`${s.padEnd(w0)} | ${l.padEnd(w1)} | ${v}`);
    for (const e of this.errors) console.log(`ERROR: ${e}`);
  }
  summaryLine() {
    const failed = this.checks.filter((c) => !c.ok);
    const known = failed.filter((c) => c.known).length;
    const state = this.errors.length ? 'ERROR' : failed.length ? 'FAIL' : 'PASS';
    return `${state.padEnd(5)} ${this.name.padEnd(14)} ${this.checks.length - failed.length}/${this.checks.length} invariants` +
      (failed.length ? ` (${failed.length} failed, ${known} of them with a known cause)` : '') +
      ` · ${this.seconds.toFixed(1)} s`;
  }
}
