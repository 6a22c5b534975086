#!/usr/bin/env bash
# bench/report.sh RESULTS_DIR: writes RESULTS_DIR/report.md and the PNG plots from the raw
# results bench/run.sh left in RESULTS_DIR/raw/*.json and RESULTS_DIR/meta.json. Re-runnable.
set -euo pipefail
dir=${1:?usage: report.sh RESULTS_DIR}
[ -f "$dir/meta.json" ] || { echo "report.sh: $dir/meta.json not found" >&2; exit 1; }
mkdir -p "$dir/plot"

all=$(jq -s '.' "$dir"/raw/*.json)
meta=$(cat "$dir/meta.json")

# ------------------------------------------------------------------ markdown (one jq program)
jq -n -r --argjson all "$all" --argjson meta "$meta" '
def r1: if . == null then "—" else (. * 10 | round / 10 | tostring) end;
def r0: if . == null then "—" else (round | tostring) end;
def mib: if . == null then "—" else (. / 1024 * 10 | round / 10 | tostring) end;
def signed: if . == null then "—" elif . >= 0 then "+" + (. * 10 | round / 10 | tostring) else (. * 10 | round / 10 | tostring) end;
def thousands: tostring | if test("^[0-9]{4,}") then (capture("^(?<a>[0-9]+?)(?<b>([0-9]{3})+)(?<c>(\\.[0-9]*)?)$") // {a: ., b: "", c: ""}) |
  (.a + (.b | [scan("[0-9]{3}")] | map("," + .) | join("")) + .c) else . end;

($all | map(select(.system != null)) | map({key: "\(.system).\(.scenario)", value: .}) | from_entries) as $R |
($meta.systems) as $systems |
(["c1", "max", "c1-before-keys", "max-before-keys", "c1-keys", "max-keys"] + ($meta.rates | map("rate-\(.)"))) as $scenarios |
def res($s; $sc): $R["\($s).\($sc)"];
def ok($s; $sc): res($s; $sc) | (. != null and (.skipped | not));
def lat($s; $sc; $p): if ok($s; $sc) then res($s; $sc).latency_us[$p] else null end;
def added($s; $sc; $p): if $s != "direct" and $sc != "max" and ok($s; $sc) and ok("direct"; $sc)
  then lat($s; $sc; $p) - lat("direct"; $sc; $p) else null end;
def cpu_per($x): if $x.ok > 0 then $x.cpu_ns / 1000 / $x.ok else null end;
def aux_per($x): if $x.ok > 0 then $x.aux_cpu_ns / 1000 / $x.ok else null end;
def scen_name($sc): if $sc == "c1" then "concurrency 1 (closed)"
  elif $sc == "c1-before-keys" then "concurrency 1, just before the keys go in"
  elif $sc == "max-before-keys" then "max throughput, just before the keys go in"
  elif $sc == "c1-keys" then "concurrency 1, many keys in api_keys"
  elif $sc == "max-keys" then "max throughput, many keys in api_keys"
  elif $sc == "max" then "max throughput (wrk -t1 -c16)"
  else "open loop \($sc | ltrimstr("rate-") | thousands) req/s" end;
def sys_name($s): {direct: "direct (client → stub)", nginx: "nginx 1 worker", portkey: "Portkey 1.15.2",
  tollgate: "tollgate 1 thread", "tollgate-2t": "tollgate 2 threads"}[$s] // $s;

# --- goals
(res("tollgate"; "max").throughput_rps) as $tg_max |
(res("nginx"; "max").throughput_rps) as $ngx_max |
(res("portkey"; "max").throughput_rps) as $pk_max |
(if ok("tollgate"; "rate-5000") then res("tollgate"; "rate-5000") else res("tollgate"; "max") end) as $cpu_run |
(if ok("tollgate"; "rate-5000") then "open loop 5,000 req/s" else "max throughput run" end) as $cpu_where |
(res("tollgate"; "stream")) as $tgs | (res("direct"; "stream")) as $ds |
(res("tollgate"; "idle")) as $tgi |
($all | map(select(.rows_per_s != null)) | .[0]) as $usage |
(if $tgi != null and $tgi.idle.opened > 0 then
   ($tgi.idle.rss_before_kib + ($tgi.idle.rss_peak_kib - $tgi.idle.rss_before_kib) * 10000 / $tgi.idle.opened) / 1024
 else null end) as $idle10k |
def goal($name; $target; $measured; $shown; $pass; $miss):
  "| \($name) | \($target) | \($shown) | " +
  (if $measured == null then "not measured" elif $pass then "**pass**" else "**miss**: \($miss)" end) + " |";
def ratio_goal($name; $k; $other; $oname):
  if $tg_max == null or $other == null or $other == 0 then goal($name; "≥ \($k) × \($oname)"; null; "—"; false; "")
  else ($tg_max / $other) as $x |
    goal($name; "≥ \($k) × \($oname)"; $x;
         "\($x * 100 | round / 100) × (\($tg_max | r0 | thousands) vs \($other | r0 | thousands) req/s)";
         $x >= $k; "\(($other * $k - $tg_max) | r0 | thousands) req/s short: \($k) × \($oname) is \($other * $k | r0 | thousands) req/s (reached \($x / $k * 100 | round) % of it)")
  end;
def max_goal($name; $target; $unit; $v):
  goal($name; "≤ \($target | thousands) \($unit)"; $v; (if $v == null then "—" else "\($v | r1) \($unit)" end);
       ($v != null and $v <= $target);
       (if $v == null then "" else "+\(($v - $target) | r1) \($unit) over (\($v / $target * 100 | round / 100) × the target)" end));

"# tollgate benchmark: \($meta.mode) run",
"",
"\($meta.date) · `bash bench/run.sh \($meta.args // ("--" + $meta.mode))` · wall time \($meta.elapsed_s) s · \($meta.cores) cores (\($meta.cpu)) · Linux \($meta.kernel) · load average at the end \($meta.loadavg_end)",
"",
"Systems, one load at a time, all on 127.0.0.1 against the same stub upstreams (`tollgate-stub --threads 1`):",
"**direct** (client → stub), **nginx** \($meta.nginx) (`proxy_pass`, upstream keep-alive, one worker: the plain-proxy ceiling), **Portkey** gateway \($meta.portkey) (node \($meta.node), one process), and **tollgate** with the full pipeline (API-key auth, admission: rate limits + balance hold in Redis, pricing, usage recorded in PostgreSQL) on **one event-loop thread**" + (if ($systems | index("tollgate-2t")) then "; **tollgate 2 threads** (`server.threads = 2`: max throughput" + (if $meta.mode == "full" then " and every plain scenario" else "" end) + ")" else "" end) + ".",
(if $meta.redis == "unix" then "tollgate reaches Redis over a Unix socket (co-located), PostgreSQL over loopback TCP."
 else "tollgate reaches Redis and PostgreSQL over loopback TCP." end),
"Load: `tollgate-loadgen` (open loop: fixed schedule, latency from the scheduled send time; \($meta.connections) connections) and `wrk \($meta.wrk)` (`-t1 -c16`, POST script) for the closed-loop maximum. " +
"Run lengths: concurrency 1 \($meta.d_c1) s, max \($meta.d_max) s, each rate \($meta.d_rate) s, streams \($meta.d_stream) s.",
"",
(if ($meta.functional_failures | length) > 0 then
  "> **Problems in this run:**\n" + ($meta.functional_failures | map("> - " + .) | join("\n")) + "\n" else empty end),
"## Goals (tollgate, 1 thread)",
"",
"| goal | target | measured | result |",
"|---|---|---|---|",
ratio_goal("throughput vs nginx (1 worker)"; 0.7; $ngx_max; "nginx"),
ratio_goal("throughput vs Portkey"; 30; $pk_max; "Portkey"),
(res("tollgate-2t"; "max").throughput_rps as $t2 | if $t2 != null and $ngx_max != null and $ngx_max > 0 then
  "| (info) tollgate **2 threads** vs nginx 1 worker | — | \($t2 / $ngx_max * 100 | round / 100) × (\($t2 | r0 | thousands) req/s) | not a goal |" else empty end),
max_goal("added latency, concurrency 1, p50"; 50; "µs"; added("tollgate"; "c1"; "p50")),
max_goal("added latency, concurrency 1, p99"; 100; "µs"; added("tollgate"; "c1"; "p99")),
max_goal("added p99, open loop 5,000 req/s"; 1000; "µs"; added("tollgate"; "rate-5000"; "p99")),
max_goal("CPU per request (tollgate process, \($cpu_where))"; 40; "µs"; (if $cpu_run != null then cpu_per($cpu_run) else null end)),
max_goal("added time to first token (stream, p50)"; 100; "µs";
  (if $tgs != null and $ds != null and $tgs.ttft_us.n > 0 and $ds.ttft_us.n > 0 then $tgs.ttft_us.p50 - $ds.ttft_us.p50 else null end)),
(if $tgi == null then goal("10,000 open streams RSS"; "≤ 256 MiB"; null; "—"; false; "")
 elif $tgi.idle.opened >= 10000 then max_goal("RSS with \($tgi.idle.opened | thousands) open streams"; 256; "MiB"; $tgi.idle.rss_peak_kib / 1024)
 else max_goal("RSS with 10,000 open streams (extrapolated from \($tgi.idle.opened | thousands))"; 256; "MiB"; $idle10k) end),
(if $usage == null then goal("usage recording into PostgreSQL"; "≥ 50,000 rows/s"; null; "—"; false; "")
 else goal("usage recording into PostgreSQL"; "≥ 50,000 rows/s"; $usage.rows_per_s; "\($usage.rows_per_s | r0 | thousands) rows/s";
   $usage.rows_per_s >= 50000; "\((50000 - $usage.rows_per_s) | r0 | thousands) rows/s short (\($usage.rows_per_s / 50000 * 100 | round) % of the target)") end),
($all | map(select(.keys_total != null)) | .[0]) as $keys |
# compared with the same measurements just before the insert (older runs: the plain scenarios)
(if ok("tollgate"; "max-before-keys") then "max-before-keys" else "max" end) as $kmax |
(if ok("tollgate"; "c1-before-keys") then "c1-before-keys" else "c1" end) as $kc1 |
(if $keys == null or (ok("tollgate"; "max-keys") | not) or (ok("tollgate"; $kmax) | not) then empty else
  (res("tollgate"; "max-keys").throughput_rps / res("tollgate"; $kmax).throughput_rps) as $kx |
  (lat("tollgate"; "c1-keys"; "p50") - lat("tollgate"; $kc1; "p50")) as $kd |
  goal("\($keys.keys_total | thousands) keys in api_keys change nothing on the hot path"; "same throughput and latency (± 10 %)"; $kx;
       "max \(res("tollgate"; "max-keys").throughput_rps | r0 | thousands) vs \(res("tollgate"; $kmax).throughput_rps | r0 | thousands) req/s (\($kx * 100 | round) %); c1 p50 \(lat("tollgate"; "c1-keys"; "p50") | r1) vs \(lat("tollgate"; $kc1; "p50") | r1) µs" + (if $kmax == "max-before-keys" then " (just before the insert)" else "" end);
       ($kx >= 0.9 and $kd <= 0.1 * lat("tollgate"; $kc1; "p50")); "outside the ± 10 % noise band") end),
($all | map(select(.kind != null and .pg_lookups != null)) | sort_by(.kind) | reverse[] |
  goal("flood of \(.kind) invalid keys (\(if .kind == "forged" then "valid checksum" else "random" end)) never reaches PostgreSQL"; "0 lookups";
       .pg_lookups; "\(.pg_lookups | thousands) lookups for \(.requests | thousands) requests (\(.rps | r0 | thousands) req/s, all 401: \(.non2xx == .requests))";
       (.non2xx == .requests and .pg_lookups == 0);
       "\(.pg_lookups | thousands) keys were looked up in PostgreSQL")),
"",
# --- why the throughput goal misses: the CPU budget of the box, from the figures of this run
(if $tg_max == null or $ngx_max == null or (ok("direct"; "max") | not) or (ok("tollgate"; "max") | not) then empty else
  ($meta.cores * 1e6) as $box |
  ($box / (0.7 * $ngx_max)) as $budget |
  ($box / res("direct"; "max").throughput_rps) as $harness |
  (cpu_per(res("tollgate"; "max"))) as $tg | (aux_per(res("tollgate"; "max"))) as $aux |
  (if ok("nginx"; "max") then cpu_per(res("nginx"; "max")) else null end) as $ngx |
  "### The throughput goal as a CPU budget (this run)",
  "",
  "At 0.7 × nginx (\(0.7 * $ngx_max | r0 | thousands) req/s) the \($meta.cores) cores have **\($budget | r1) µs** of CPU per request. The direct run, which saturates the box with the load generator and the stub alone, shows they take \($harness | r1) µs of it, leaving **\(($budget - $harness) | r1) µs** for the proxy and what it needs. nginx needs \($ngx | r1) µs. tollgate needs \($tg | r1) µs itself plus \($aux | r1) µs in Redis (admission and settle) and PostgreSQL (the usage row, ledger row and debit): \(($tg + $aux) | r1) µs, \((($tg + $aux) / ($budget - $harness)) * 100 | round / 100) × what is left." +
  (if $usage != null and $usage.pg_cpu_ns != null then ($usage.pg_cpu_ns / 1000 / $usage.rows) as $pg |
    " The usage row alone costs PostgreSQL \($pg | r1) µs at its best batch size (usage recording below), which leaves \(($budget - $harness - $pg) | r1) µs for tollgate and Redis together." else "" end)
end),
"",
# --- the latency and CPU goals against what a plain proxy does on the same box, same run
(if ok("nginx"; "c1") | not then empty else
  (if ok("nginx"; "rate-5000") then res("nginx"; "rate-5000") else null end) as $n5k |
  (res("nginx"; "stream")) as $ns |
  ($all | map(select(.redis_rtt != null)) | .[0].redis_rtt) as $rtt |
  def ttft_added($x): if $x != null and $ds != null and $x.ttft_us.n > 0 and $ds.ttft_us.n > 0 then $x.ttft_us.p50 - $ds.ttft_us.p50 else null end;
  "### The latency and CPU goals next to nginx (this run)",
  "",
  "nginx forwards with no authentication, admission, pricing or recording: what a proxy hop alone costs on this box.",
  "",
  "| goal | target | nginx (plain proxy) | tollgate |",
  "|---|--:|--:|--:|",
  "| added latency, concurrency 1, p50 | 50 µs | \(added("nginx"; "c1"; "p50") | signed) µs | \(added("tollgate"; "c1"; "p50") | signed) µs |",
  "| added latency, concurrency 1, p99 | 100 µs | \(added("nginx"; "c1"; "p99") | signed) µs | \(added("tollgate"; "c1"; "p99") | signed) µs |",
  "| added p99, open loop 5,000 req/s | 1,000 µs | \(added("nginx"; "rate-5000"; "p99") | signed) µs | \(added("tollgate"; "rate-5000"; "p99") | signed) µs |",
  "| CPU per request, open loop 5,000 req/s | 40 µs | \(if $n5k != null then cpu_per($n5k) | r1 else "—" end) µs | \(if $cpu_run != null then cpu_per($cpu_run) | r1 else "—" end) µs |",
  "| added time to first token, p50 | 100 µs | \(ttft_added($ns) | signed) µs | \(ttft_added($tgs) | signed) µs |",
  "",
  (if $rtt == null or $rtt.tcp_p50_us == null then empty else
    (if $rtt.via == "unix" and $rtt.unix_p50_us != null then $rtt.unix_p50_us else $rtt.tcp_p50_us end) as $r |
    "A Redis round trip alone (`redis-benchmark` PING, concurrency 1) takes \($r | r1) µs p50 here over the \(if $rtt.via == "unix" then "Unix socket" else "TCP connection" end) tollgate uses (TCP: \($rtt.tcp_p50_us | r1) µs). Admission makes one before forwarding, so at concurrency 1 tollgate cannot add less than what nginx adds (\(added("nginx"; "c1"; "p50") | signed) µs) plus that round trip plus the run time of the admission script in Redis: at least \((added("nginx"; "c1"; "p50") + $r) | r1) µs against the 50 µs target." end)
end),
"",
"## Results by system and scenario",
"",
"Latency in µs. *added* = this system minus **direct** in the same run and scenario. CPU = on-CPU time of the system process (for direct: the stub) over the run, divided by its successful requests. Peak RSS = VmHWM of that process after the scenario. For open-loop rows, latency runs from the scheduled send time; *lag* is how late the load generator sent (p99), a check on the generator itself.",
"",
"| system | scenario | req/s | p50 | p99 | p99.9 | added p50 | added p99 | CPU µs/req | peak RSS MiB | errors | lag p99 |",
"|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
($systems[] as $s | $scenarios[] as $sc | res($s; $sc) as $x | select($x != null) |
  if $x.skipped then "| \(sys_name($s)) | \(scen_name($sc)) | not run: above 90 % of its max (\($x.max_rps | thousands) req/s) | | | | | | | | | |"
  else "| \(sys_name($s)) | \(scen_name($sc)) | \($x.throughput_rps | r0 | thousands) | \($x.latency_us.p50 | r1) | \($x.latency_us.p99 | r1) | \($x.latency_us.p999 | r1) | \(added($s; $sc; "p50") | signed) | \(added($s; $sc; "p99") | signed) | \(cpu_per($x) | r1) | \($x.hwm_kib | mib) | \($x.errors) | \(if $x.send_lag_us != null and $sc != "c1" then ($x.send_lag_us.p99 | r1) else "" end) |"
  end),
"",
"## Streaming",
"",
"\($meta.stream_rate) streams/s (open loop) for \($meta.d_stream) s, each \($meta.stream_chunks) content events \($meta.stream_interval_ms) ms apart. TTFT = first `data:` event after the scheduled send; gap = time between consecutive data events (the stub spaces them \($meta.stream_interval_ms) ms; the last few come back to back). µs. tollgate has one event fewer per stream by design: it asks the upstream for usage and, as OpenAI does, passes the usage-only chunk on only to clients that sent stream_options.include_usage.",
"",
"| system | streams | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 | gap p50 | gap p99 | added gap p99 | events/stream | CPU µs/stream | errors |",
"|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
($systems[] as $s | res($s; "stream") as $x | select($x != null and $x.ttft_us != null) |
  (if $s != "direct" and $ds != null then $x.ttft_us.p50 - $ds.ttft_us.p50 else null end) as $a50 |
  (if $s != "direct" and $ds != null then $x.ttft_us.p99 - $ds.ttft_us.p99 else null end) as $a99 |
  (if $s != "direct" and $ds != null then $x.gap_us.p99 - $ds.gap_us.p99 else null end) as $g99 |
  "| \(sys_name($s)) | \($x.streams) | \($x.ttft_us.p50 | r1) | \($x.ttft_us.p99 | r1) | \($a50 | signed) | \($a99 | signed) | \($x.gap_us.p50 | r1) | \($x.gap_us.p99 | r1) | \($g99 | signed) | \(if $x.streams > 0 then ($x.events / $x.streams | r1) else "—" end) | \(cpu_per($x) | r1) | \($x.errors) |"),
"",
"## Concurrent open streams",
"",
"Each system holds N streaming requests open at once (the stub sends an event every few seconds) for \($meta.hold_s) s. RSS of the system process (for direct: the stub).",
(if ($meta.idle_note // "") != "" then "\nNote: \($meta.idle_note)." else empty end),
"",
"| system | streams open | of | ramp s | RSS before MiB | RSS holding MiB | KiB per stream | TTFT p50 µs | TTFT p99 µs |",
"|---|--:|--:|--:|--:|--:|--:|--:|--:|",
($systems[] as $s | res($s; "idle") as $x | select($x != null and $x.idle != null) |
  "| \(sys_name($s)) | \($x.idle.opened | thousands) | \($x.idle.target | thousands) | \($x.idle.ramp_s) | \($x.idle.rss_before_kib | mib) | \($x.idle.rss_peak_kib | mib) | \(if $x.idle.opened > 0 then (($x.idle.rss_peak_kib - $x.idle.rss_before_kib) / $x.idle.opened | r1) else "—" end) | \($x.ttft_us.p50 | r1) | \($x.ttft_us.p99 | r1) |"),
"",
"## tollgate: CPU including Redis and PostgreSQL",
"",
"The admission round trip runs in Redis and the usage rows are written by PostgreSQL; their on-CPU time over the same runs (all Redis and PostgreSQL processes of the throwaway instances), per request.",
"",
"| scenario | tollgate µs/req | Redis + PostgreSQL µs/req | total µs/req |",
"|---|--:|--:|--:|",
($scenarios[] as $sc | res("tollgate"; $sc) as $x | select($x != null and ($x.skipped | not) and $x.ok > 0) |
  "| \(scen_name($sc)) | \(cpu_per($x) | r1) | \(aux_per($x) | r1) | \((cpu_per($x) + aux_per($x)) | r1) |"),
"",
"## Usage recording",
"",
(if $usage == null then "not measured" else
 "`tollgate-usagebench`: \($usage.rows | thousands) usage records appended to the journal as fast as possible and committed through `sql/usage_writer` (batches of up to \($usage.batch_rows) on \($usage.connections // 2) connections, COPY: usage row + ledger row + balance debit per record, one transaction per batch) into the throwaway PostgreSQL (fsync and synchronous_commit on): **\($usage.rows_per_s | r0 | thousands) rows/s** (\($usage.committed | thousands) committed in \($usage.seconds) s, \($usage.batches) batches; appending took \($usage.append_seconds) s). CPU per row: PostgreSQL \(if $usage.pg_cpu_ns != null then ($usage.pg_cpu_ns / 1000 / $usage.rows | r1) else "—" end) µs, the writer process (journal, batching, libpq) \(if $usage.self_cpu_s != null then ($usage.self_cpu_s * 1e6 / $usage.rows | r1) else "—" end) µs. The proxy runs above recorded \($usage.recorded_by_runs | thousands) rows. Redis balance sync after each batch is not included." end),
"",
(($all | map(select(.scenario == "syscalls"))) as $sc |
 if ($sc | length) == 0 then empty else
 "## System calls per request (`--perf`: strace -c, 500 req/s for 2 s)",
 "",
 "| system | syscalls/request | top calls per request (failed) |",
 "|---|--:|---|",
 ($sc[] | . as $x | select($x.requests > 0) |
   "| \(sys_name($x.system)) | \($x.total / $x.requests | r1) | \($x.calls | to_entries | map(select(.value[0] / $x.requests >= 0.05)) | sort_by(-.value[0]) | .[0:9] |
      map("\(.key) \(.value[0] / $x.requests | r1)" + (if .value[1] > 0 then " (\(.value[1] / $x.requests | r1))" else "" end)) | join(", ")) |"),
 "" end),
"## Plots",
"",
"![latency percentiles vs rate](latency_vs_rate.png)",
"",
"![maximum throughput](throughput.png)",
""
' >"$dir/report.md"

# --perf: tollgate's flat CPU profile during its max-throughput run
if compgen -G "$dir/perf/*.max.txt" >/dev/null; then
  {
    echo "## CPU profile (\`--perf\`: perf record -F 1999 during the max-throughput run)"
    echo
    for f in "$dir"/perf/*.max.txt; do
      name=$(basename "$f" .max.txt)
      echo "**$name**, by shared object:"
      echo
      echo '```'
      cat "$dir/perf/$name.max.dso.txt" 2>/dev/null || true
      echo '```'
      echo
      echo "**$name**, top functions (self time):"
      echo
      echo '```'
      head -n 25 "$f"
      echo '```'
      echo
    done
  } >>"$dir/report.md"
fi

# ------------------------------------------------------------------ plot data
systems=$(jq -r '.systems[]' <<<"$meta")
plot_systems=()
for s in $systems; do
  jq -r --arg s "$s" '.[] | select(.system == $s and (.scenario | startswith("rate-")) and (.skipped | not)) |
    [.rate, .latency_us.p50, .latency_us.p99, .latency_us.p999] | @tsv' <<<"$all" | sort -n >"$dir/plot/$s.rates.dat"
  [ -s "$dir/plot/$s.rates.dat" ] && plot_systems+=("$s")
done
jq -r --argjson meta "$meta" '. as $a | $meta.systems[] as $s | $a[] | select(.system == $s and .scenario == "max") |
  [.system, (.throughput_rps | round)] | @tsv' <<<"$all" >"$dir/plot/throughput.dat"

if command -v gnuplot >/dev/null; then
  {
    echo "set terminal pngcairo size 1500,480 font 'sans,10'"
    echo "set output '$dir/latency_vs_rate.png'"
    echo "set multiplot layout 1,3 title 'Open-loop latency vs offered rate ($(jq -r .mode <<<"$meta") run; latency from scheduled send)'"
    echo "set logscale y; set grid; set key top left; set xlabel 'offered rate (req/s)'; set ylabel 'µs'"
    for col in 2:p50 3:p99 4:p99.9; do
      echo "set title '${col#*:}'"
      line="plot "
      sep=""
      for s in "${plot_systems[@]}"; do
        line+="$sep'$dir/plot/$s.rates.dat' using 1:${col%%:*} with linespoints lw 2 title '$s'"
        sep=", "
      done
      [ ${#plot_systems[@]} -gt 0 ] && echo "$line"
    done
    echo "unset multiplot"
    echo "reset"
    echo "set terminal pngcairo size 900,480 font 'sans,10'"
    echo "set output '$dir/throughput.png'"
    echo "set title 'Closed-loop maximum throughput (wrk -t1 -c16, small chat completion)'"
    echo "set style data histograms; set style fill solid 0.8 border -1; set boxwidth 0.7"
    echo "set ylabel 'requests/s'; set grid ytics; unset key"
    echo "stats '$dir/plot/throughput.dat' using 2 nooutput"
    echo "set yrange [0:STATS_max * 1.12]"
    echo "plot '$dir/plot/throughput.dat' using 2:xtic(1) lc rgb '#4477aa', '' using 0:2:2 with labels offset 0,0.7 notitle"
  } >"$dir/plot/plots.gp"
  gnuplot "$dir/plot/plots.gp" 2>"$dir/plot/gnuplot.log" || echo "report.sh: gnuplot failed (see $dir/plot/gnuplot.log)" >&2
fi
echo "$dir/report.md"
