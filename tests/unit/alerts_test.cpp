// Operator alerts (proxy/alerts.hpp, proxy/alert_queue.hpp): the Tollgate-Signature header, the
// retry schedule, the body, and the request path's bounded, deduplicating queue.
#include "proxy/alert_queue.hpp"
#include "proxy/alerts.hpp"

#include <catch2/catch.hpp>

#include <boost/json.hpp>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

using namespace tollgate;
using std::chrono::milliseconds;

TEST_CASE("alert signature: t=<unix s>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">", "[alerts]") {
  // Vector computed independently: python3 -c "import hmac,hashlib;
  //   print(hmac.new(b'whsec_test', b'1700000000.{\"id\":\"evt_1\"}', hashlib.sha256).hexdigest())"
  CHECK(alert_signature("whsec_test", 1700000000, R"({"id":"evt_1"})") ==
        "t=1700000000,v1=c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925");
  // The timestamp is signed: another t, another MAC; another secret, another MAC.
  auto a = alert_signature("whsec_test", 1700000001, R"({"id":"evt_1"})");
  CHECK(a.starts_with("t=1700000001,v1="));
  CHECK(a.substr(16) != "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925");
  CHECK(alert_signature("other", 1700000000, R"({"id":"evt_1"})") !=
        alert_signature("whsec_test", 1700000000, R"({"id":"evt_1"})"));
  CHECK(alert_signature("k", 1, "").size() == std::string("t=1,v1=").size() + 64);
}

TEST_CASE("alert retries: doubling from the base, capped at 1 h, jitter within 0.8..1.2 and never past the cap",
          "[alerts]") {
  const milliseconds base{1000}, cap{3'600'000};
  // jitter_unit 0.5 is the factor 1.0: the bare schedule.
  std::vector<std::int64_t> got;
  for (int n = 1; n <= 14; ++n) got.push_back(alert_retry_delay(n, base, cap, 0.5).count());
  CHECK(got == std::vector<std::int64_t>{1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 512000,
                                         1024000, 2048000, 3600000, 3600000});
  CHECK(alert_retry_delay(1000, base, cap, 0.5) == cap);  // no overflow however many failures
  CHECK(alert_retry_delay(3, base, cap, 0.0).count() == 3200);
  CHECK(alert_retry_delay(3, base, cap, 0.999999).count() == 4799);
  CHECK(alert_retry_delay(20, base, cap, 0.999999) == cap);
  CHECK(alert_retry_delay(1, milliseconds{50}, cap, 0.5).count() == 50);  // what the e2e test uses
}

TEST_CASE("alert body: id, type, created and the row's data", "[alerts]") {
  sql::OutboxAlert a{7, "evt_abc", "balance.low", R"({"account":"u1","balance_usd":"0.500000"})", 1700000000, 0};
  auto v = boost::json::parse(alert_body(a)).as_object();
  CHECK(v.at("id").as_string() == "evt_abc");
  CHECK(v.at("type").as_string() == "balance.low");
  CHECK(v.at("created").as_int64() == 1700000000);
  CHECK(v.at("data").at("balance_usd").as_string() == "0.500000");
  CHECK(v.size() == 4);
}

TEST_CASE("spend_limit.reached events: deterministic id per limit and period, deduplicated and bounded", "[alerts]") {
  constexpr std::int64_t day = 86'400'000, nov29 = 1'795'910'400'000;  // 2026-11-29T00:00:00Z
  SpendLimitEvent e{"key", "k1", "u1", 1, nov29, nov29 + day};
  CHECK(e.event_id() == "spend_limit:key:k1:2026-11-29T00:00:00Z");
  auto p = boost::json::parse(e.payload_json()).as_object();
  CHECK(p.at("limit_usd").as_string() == "0.000001");
  CHECK(p.at("key_id").as_string() == "k1");
  CHECK(p.at("resets_at").as_string() == "2026-11-30T00:00:00Z");
  SpendLimitEvent never{"account", "u1", "u1", 5'000'000, 0, LLONG_MAX};
  CHECK(never.event_id() == "spend_limit:account:u1:1970-01-01T00:00:00Z");
  CHECK(boost::json::parse(never.payload_json()).at("resets_at").is_null());
  CHECK_FALSE(boost::json::parse(never.payload_json()).as_object().contains("key_id"));

  AlertQueue q(2);
  CHECK(q.push(e));
  CHECK_FALSE(q.push(e));  // same limit, same period
  SpendLimitEvent next_day = e;
  next_day.period_start_ms += day;
  CHECK(q.push(next_day));
  CHECK_FALSE(q.push(never));  // full
  CHECK(q.dropped() == 1);
  auto taken = q.take();
  REQUIRE(taken.size() == 2);
  CHECK(taken[0].event_id() == e.event_id());
  CHECK(q.take().empty());
  CHECK_FALSE(q.push(e));  // still remembered after it was taken
  CHECK(q.push(never));
}

namespace {
/// A TOML file with `text`, removed at scope exit; the alert environment variables unset meanwhile.
struct AlertsToml {
  std::filesystem::path path;
  explicit AlertsToml(const std::string& text) {
    path = std::filesystem::temp_directory_path() / ("tollgate-alerts-config-" + std::to_string(::getpid()) + ".toml");
    std::ofstream(path) << text;
    unset();
  }
  ~AlertsToml() {
    std::filesystem::remove(path);
    unset();
  }
  static void unset() {
    for (const char* v : {"TOLLGATE_ALERTS_URL", "TOLLGATE_ALERTS_SECRET", "TOLLGATE_ALERTS_RETRY_BASE_MS",
                          "TOLLGATE_ALERTS_POLL_MS"})
      ::unsetenv(v);
  }
};
}  // namespace

TEST_CASE("alerts config: defaults, TOML, environment; a URL needs a secret", "[alerts]") {
  {
    AlertsToml f("");
    Config c = Config::load(f.path.string());
    CHECK(c.alerts_url.empty());
    CHECK(c.alerts_retry_base == milliseconds(1000));
    CHECK(c.alerts_max_age == std::chrono::hours(24));
  }
  {
    AlertsToml f("[alerts]\nurl = \"https://ops.example.com/hook\"\nsecret = \"s\"\nretry_base_ms = 50\n");
    Config c = Config::load(f.path.string());
    CHECK(c.alerts_url == "https://ops.example.com/hook");
    CHECK(c.alerts_retry_base == milliseconds(50));
    ::setenv("TOLLGATE_ALERTS_URL", "http://127.0.0.1:9/x", 1);
    ::setenv("TOLLGATE_ALERTS_RETRY_BASE_MS", "7", 1);
    c = Config::load(f.path.string());
    CHECK(c.alerts_url == "http://127.0.0.1:9/x");
    CHECK(c.alerts_retry_base == milliseconds(7));
  }
  {
    AlertsToml f("[alerts]\nurl = \"https://ops.example.com/hook\"\n");
    CHECK_THROWS_WITH(Config::load(f.path.string()), Catch::Contains("alerts.secret"));
  }
  {
    AlertsToml f("[alerts]\nurl = \"ftp://ops.example.com/hook\"\nsecret = \"s\"\n");
    CHECK_THROWS(Config::load(f.path.string()));
  }
  {
    AlertsToml f("[alerts]\npoll_ms = 0\n");
    CHECK_THROWS_WITH(Config::load(f.path.string()), Catch::Contains("alerts.poll_ms"));
  }
}
