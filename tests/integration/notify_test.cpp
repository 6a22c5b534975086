// LISTEN/NOTIFY keeps the key cache and pricing true: a revoked key is gone within 1 s.
#include "db_fixture.hpp"
#include "keys/api_key.hpp"
#include "keys/key_cache.hpp"
#include "sql/notify_listener.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <regex>
#include <thread>
#include <vector>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

TEST_CASE("revoking a key drops it from the cache within 1 s; price changes reload") {
  auto url = database_url();
  sql::PgConn db(url);
  keys::KeyCache cache(1000, 60s, 5s);
  std::atomic<int> pricing_reloads{0};
  sql::NotifyListener listener(
      url,
      [&](sql::PgConn&, const std::string& channel, const std::string& payload) {
        if (channel == "tollgate_api_keys") cache.erase(payload);
        if (channel == "tollgate_accounts") cache.erase_user(payload);
        if (channel == "tollgate_pricing") ++pricing_reloads;
      },
      [&](sql::PgConn&) { cache.clear(); });
  listener.start();

  auto user = funded_account(db, "1");
  auto k = sql::create_key(db, user, std::nullopt, 0);
  auto hash = keys::hash_key(k.raw_key);
  std::this_thread::sleep_for(300ms);  // let the INSERT's notification pass (it invalidates)
  auto now = keys::KeyCache::Clock::now();
  cache.put(hash, std::make_shared<const keys::KeyRecord>(*sql::lookup_key(db, hash)), cache.generation(), now);
  REQUIRE(cache.find(hash, now));

  // last_used_at updates (every usage batch) must not invalidate.
  db.exec("UPDATE api_keys SET last_used_at = now() WHERE id = $1", {k.key_id});
  std::this_thread::sleep_for(300ms);
  CHECK(cache.find(hash, keys::KeyCache::Clock::now()));

  auto t0 = std::chrono::steady_clock::now();
  sql::revoke_key(db, k.key_id);
  while (cache.find(hash, keys::KeyCache::Clock::now()) && std::chrono::steady_clock::now() - t0 < 2s)
    std::this_thread::sleep_for(5ms);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK_FALSE(cache.find(hash, keys::KeyCache::Clock::now()));
  CHECK(elapsed < 1s);
  WARN("revocation reached the cache in " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");

  int before = pricing_reloads;
  db.exec("UPDATE pricing_rules SET updated_at = now() WHERE false");  // statement-level trigger fires anyway
  auto t1 = std::chrono::steady_clock::now();
  while (pricing_reloads == before && std::chrono::steady_clock::now() - t1 < 2s) std::this_thread::sleep_for(5ms);
  CHECK(pricing_reloads > before);
  listener.stop();
}

namespace {

/// A TCP relay on an ephemeral 127.0.0.1 port in front of PostgreSQL that can play "down": then
/// it accepts and closes at once (recording when, i.e. each reconnect attempt) and cuts the
/// connections it relays; up, it relays bytes both ways.
class Relay {
 public:
  Relay(std::string host, int port) : host_(std::move(host)), port_(port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    own_port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Relay() {
    stop_ = true;
    acceptor_.join();
    set_down(true);
    for (auto& t : pipes_) t.join();
    for (int s : live_) ::close(s);  // closed only now: shutdown() never meets a reused number
    ::close(fd_);
  }
  int port() const { return own_port_; }
  void set_down(bool down) {
    std::lock_guard lock(mu_);
    down_ = down;
    if (down)
      for (int s : live_) ::shutdown(s, SHUT_RDWR);
  }
  std::vector<std::chrono::steady_clock::time_point> refused() {
    std::lock_guard lock(mu_);
    return refused_;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::lock_guard lock(mu_);
      if (down_) {
        refused_.push_back(std::chrono::steady_clock::now());
        ::close(c);
        continue;
      }
      int u = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(port_));
      ::inet_pton(AF_INET, host_.c_str(), &a.sin_addr);
      if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(u);
        ::close(c);
        continue;
      }
      live_.push_back(c);
      live_.push_back(u);
      pipes_.emplace_back([c, u] { pipe(c, u); });
    }
  }
  static void pipe(int a, int b) {  // both directions until either side ends (or is shut down)
    char buf[16384];
    for (;;) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (::poll(p, 2, 100) < 0) break;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        done = n <= 0 || ::write(p[1 - i].fd, buf, static_cast<std::size_t>(n)) != n;
      }
      if (done) break;
    }
    ::shutdown(a, SHUT_RDWR);
    ::shutdown(b, SHUT_RDWR);
  }
  std::string host_;
  int port_, own_port_ = 0, fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  bool down_ = false;
  std::vector<int> live_;
  std::vector<std::thread> pipes_;
  std::vector<std::chrono::steady_clock::time_point> refused_;
  std::thread acceptor_;
};

}  // namespace

TEST_CASE("after PostgreSQL comes back the listener reconnects within max_backoff (missed revocations end)") {
  auto url = database_url();
  std::smatch m;
  REQUIRE(std::regex_search(url, m, std::regex(R"(@([0-9.]+):([0-9]+)/)")));
  Relay relay(m[1].str(), std::stoi(m[2].str()));
  std::string via = url.substr(0, static_cast<std::size_t>(m.position(0))) + "@127.0.0.1:" +
                    std::to_string(relay.port()) + "/" + m.suffix().str();
  std::atomic<int> connects{0};
  sql::NotifyListener listener(via, [](sql::PgConn&, const std::string&, const std::string&) {},
                               [&](sql::PgConn&) { ++connects; }, 50ms);
  listener.start();
  REQUIRE(connects == 1);

  relay.set_down(true);  // PostgreSQL "down" for 3 s: every attempt is cut at once
  std::this_thread::sleep_for(3s);
  relay.set_down(false);
  const auto back = std::chrono::steady_clock::now();
  while (connects < 2 && std::chrono::steady_clock::now() - back < 5s) std::this_thread::sleep_for(5ms);
  const auto took = std::chrono::steady_clock::now() - back;
  listener.stop();

  auto attempts = relay.refused();
  REQUIRE(attempts.size() >= 3);
  std::chrono::steady_clock::duration widest{};
  for (std::size_t i = 1; i < attempts.size(); ++i) widest = std::max(widest, attempts[i] - attempts[i - 1]);
  CHECK(connects == 2);
  // Backoff grows 100, 200, 400 ms, then stays at the 500 ms cap (with the old 2 s cap the
  // fourth wait was already 800 ms).
  static_assert(sql::NotifyListener::max_backoff == 500ms);
  CHECK(widest <= 650ms);
  CHECK(took <= 800ms);
  WARN(attempts.size() << " reconnect attempts in 3 s; reconnected " <<
       std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms after PostgreSQL was back");
}
