// tollgate-usagebench: how many usage records per second tollgate's usage writer
// (sql/usage_writer: journal append + batched transactions — COPY of the usage and ledger rows,
// one balance update — on --connections connections) commits into PostgreSQL. It appends --rows
// records for one account as fast as it can and waits until the writer reports all of them
// committed. The Redis balance sync tollgate does after each batch is not part of this figure
// (no on_committed hook).
//
//   tollgate-usagebench --database-url URL --journal-dir DIR --user UUID [--key UUID]
//                       [--rows 100000] [--batch 5000] [--connections 2] [--max-delay-ms 20]
//                       [--timeout 120] [--json]
#include "sql/usage_writer.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <sys/resource.h>
#include <unistd.h>

using namespace tollgate;
using Clock = std::chrono::steady_clock;

namespace {
[[noreturn]] void die(const std::string& msg) {
  std::cerr << "tollgate-usagebench: " << msg << "\n";
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  std::string url, dir, user, key;
  long rows = 100000, batch = 5000, max_delay_ms = 20, connections = 2;
  double timeout_s = 120;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto need = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value for " + a);
      return argv[++i];
    };
    if (a == "--database-url") url = need();
    else if (a == "--journal-dir") dir = need();
    else if (a == "--user") user = need();
    else if (a == "--key") key = need();
    else if (a == "--rows") rows = std::atol(need().c_str());
    else if (a == "--batch") batch = std::atol(need().c_str());
    else if (a == "--connections") connections = std::atol(need().c_str());
    else if (a == "--max-delay-ms") max_delay_ms = std::atol(need().c_str());
    else if (a == "--timeout") timeout_s = std::atof(need().c_str());
    else if (a == "--json") json = true;
    else die("unknown argument " + a);
  }
  if (url.empty() || dir.empty() || user.empty()) die("--database-url, --journal-dir and --user are required");
  if (rows < 1 || batch < 1 || connections < 1 || connections > 16 || timeout_s <= 0 || timeout_s > 3600)
    die("bad --rows/--batch/--connections/--timeout");

  sql::UsageWriter writer(dir, url, static_cast<std::size_t>(batch), std::chrono::milliseconds(max_delay_ms),
                          static_cast<std::size_t>(connections));
  writer.start();
  const auto epoch_us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string run = fmt::format("bench-{}-{}", ::getpid(), epoch_us);
  sql::UsageRecord r;
  r.user_id = user;
  r.api_key_id = key;
  r.model = "openai/gpt-4o-mini";
  r.prompt_tokens = 24;
  r.completion_tokens = 8;
  r.cost = 9;     // µ$ (rounded up)
  r.charge = 11;  // µ$
  r.status = "success";
  r.request_metadata_json = R"({"endpoint":"/chat/completions","stream":false,"max_tokens":null,"body_bytes":96})";

  Clock::time_point t0 = Clock::now();
  for (long i = 0; i < rows; ++i) {
    r.request_id = fmt::format("{}-{}", run, i);
    r.created_at_us = epoch_us + i;
    r.response_metadata_json = fmt::format(
        R"({{"status_code":200,"generation_id":"gen-{}","finish_reason":"stop","delivered_chunks":0,"usage_reported":true,"duration_us":95}})",
        i);
    writer.append(r);
  }
  Clock::time_point t_appended = Clock::now();
  bool drained = writer.flush(std::chrono::milliseconds(static_cast<long>(timeout_s * 1000)));
  Clock::time_point t1 = Clock::now();
  auto s = writer.stats();
  writer.stop(std::chrono::seconds(5));
  double secs = std::chrono::duration<double>(t1 - t0).count();
  double append_secs = std::chrono::duration<double>(t_appended - t0).count();
  double rate = static_cast<double>(s.committed) / secs;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);  // this process: appends, the writer thread, libpq
  double self_cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                    static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  if (json)
    fmt::print(R"({{"rows":{},"committed":{},"batches":{},"failures":{},"drained":{},"seconds":{:.3f},)"
               R"("append_seconds":{:.3f},"rows_per_s":{:.0f},"batch_rows":{},"connections":{},)"
               R"("copy_batches":{},"fallback_batches":{},"self_cpu_s":{:.3f}}})"
               "\n",
               rows, s.committed, s.batches, s.failures, drained, secs, append_secs, rate, batch, connections,
               s.copy_batches, s.fallback_batches, self_cpu);
  else
    fmt::print("{} of {} usage records committed in {:.3f} s ({} batches, {} failures): {:.0f} rows/s\n", s.committed,
               rows, secs, s.batches, s.failures, rate);
  return drained && s.committed == static_cast<std::uint64_t>(rows) ? 0 : 1;
}
