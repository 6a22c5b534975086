// The request path end to end in-process (issue 12): run_session over a loopback client socket,
// with fake key source, admission, usage sink and upstreams (request_path_fakes.hpp says why
// the sockets are real). Milliseconds per test; no Redis, no Postgres, no external process.
#include "request_path_fakes.hpp"

#include "keys/api_key.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

using namespace tollgate;
using namespace tollgate::test;
using Response = Client::Response;

TEST_CASE("401: no key, malformed, unknown, revoked; kept alive without a body, closed with one unread",
          "[request_path]") {
  Harness h;
  auto revoked = h.add_key(false);
  auto unknown_to_source = keys::generate_key();  // in the filter, unknown to the key source
  h.key_filter.add(unknown_to_source.hash_hex);
  auto forged = keys::generate_key().raw;  // well formed, in neither: refused by the filter
  auto c = h.connect();
  auto r = c.request(get_models());
  CHECK(answer_of(r) == "401 invalid_api_key");
  CHECK_FALSE(says_close(r));  // no body: the connection goes on
  for (std::string k : {std::string("tg_not-a-key"), unknown_to_source.raw, forged, revoked}) {
    r = c.request(get_models(k));
    CHECK(answer_of(r) == "401 invalid_api_key");
    CHECK_FALSE(says_close(r));
  }
  CHECK(std::string(error_of(r).at("message").as_string()).find("revoked") != std::string::npos);
  CHECK(h.key_source.lookups == 2);  // the unknown and the revoked key; the forged one never
  r = c.request(get_models(h.key));
  CHECK(r.result_int() == 200);
  // A POST whose body was never read (refused before it): answered, then closed.
  r = c.request(h.post(Harness::chat_body(), "/v1/chat/completions", std::string_view("tg_bad")));
  CHECK(r.result_int() == 401);
  CHECK(says_close(r));
  CHECK(c.closed());
  CHECK(h.upstream.received.empty());
  CHECK(h.session_errors.empty());
}

TEST_CASE("402 when the balance does not cover the worst case", "[request_path]") {
  SECTION("admission says insufficient balance") {
    Harness h;
    h.admission.script.push_back(FakeAdmission::insufficient(5));
    auto c = h.connect();
    auto r = c.request(h.post(Harness::chat_body()));
    CHECK(answer_of(r) == "402 insufficient_credits");
    CHECK_FALSE(says_close(r));  // the body was read
    CHECK(c.request(get_models(h.key)).result_int() == 200);
    CHECK(h.admission.settles.empty());  // nothing admitted, nothing to settle
  }
  SECTION("admission off: the key source's balance is too low") {
    Harness h({.admission = false});
    h.key_source.balances["acct-1"] = 10;
    auto c = h.connect();
    auto r = c.request(h.post(Harness::chat_body()));
    CHECK(answer_of(r) == "402 insufficient_credits");
    h.key_source.balances["acct-1"] = 1'000'000;  // enough now: served, recorded
    r = c.request(h.post(Harness::chat_body()));
    CHECK(r.result_int() == 200);
    REQUIRE(h.usage.records.size() == 1);
    CHECK(h.usage.records[0].charge == 20);  // 10 prompt × 1 + 5 completion × 2 credit units
  }
}

TEST_CASE("429 from admission carries Retry-After and the x-ratelimit headers", "[request_path]") {
  Harness h;
  h.admission.script.push_back(FakeAdmission::rate_limited(1500));
  auto c = h.connect();
  auto r = c.request(h.post(Harness::chat_body()));
  CHECK(answer_of(r) == "429 key_requests_per_minute");
  CHECK(r["retry-after"] == "2");
  CHECK(r["x-ratelimit-limit-requests"] == "60");
  CHECK(r["x-ratelimit-remaining-requests"] == "0");
  CHECK_FALSE(r["x-ratelimit-reset-requests"].empty());
  CHECK_FALSE(r["x-request-id"].empty());
  CHECK_FALSE(says_close(r));
  CHECK(h.upstream.received.empty());
}

TEST_CASE("400s are answered in OpenAI's envelope and the connection is kept", "[request_path]") {
  Harness h;
  auto limited = h.add_key(true, 1000);
  auto c = h.connect();
  std::vector<std::pair<std::string, std::string>> cases{  // request, error code
      {h.post(R"({"model":"test/model","messages":[)"), "invalid_json"},
      {h.post(Harness::chat_body(false, "test/nope")), "model_not_found"},
      {h.post(R"({"model":"test/model","input":"hi","stream":true})", "/v1/embeddings"), "invalid_value"},
      {h.post(Harness::chat_body(false, model, R"(,"max_tokens":5000)"), "/v1/chat/completions", limited),
       "max_tokens_exceeded"},
  };
  for (const auto& [request, code] : cases) {
    auto r = c.request(request);
    CHECK(answer_of(r) == "400 " + code);
    CHECK(error_of(r).at("type").as_string() == "invalid_request_error");
    CHECK_FALSE(says_close(r));
  }
  CHECK(c.request(get_models(h.key)).result_int() == 200);  // still the same connection
  CHECK(h.admission.admitted.empty());
  CHECK(h.upstream.received.empty());
}

TEST_CASE("404 and 405", "[request_path]") {
  Harness h;
  auto c = h.connect();
  auto r = c.request("GET /v1/nope HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(answer_of(r) == "404 unknown_url");
  r = c.request("GET /v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(answer_of(r) == "405 method_not_allowed");
  r = c.request(h.post(Harness::chat_body(false, "test/unrouted")));  // priced, but no route
  CHECK(answer_of(r) == "404 model_not_found");
  CHECK_FALSE(says_close(r));
  CHECK(h.admission.admitted.empty());  // unroutable: nothing held
}

TEST_CASE("keep-alive decisions", "[request_path]") {
  SECTION("the client's Connection: close, and HTTP/1.0") {
    for (bool http10 : {false, true}) {
      Harness h;
      auto c = h.connect();
      auto r = c.request(http10 ? "GET /v1/models HTTP/1.0\r\nAuthorization: Bearer " + h.key + "\r\n\r\n"
                                : h.post(Harness::chat_body(), "/v1/chat/completions", std::nullopt,
                                         "Connection: close\r\n"));
      CHECK(r.result_int() == 200);
      CHECK(says_close(r));
      CHECK(c.closed());
    }
  }
  SECTION("the last request of max_requests_per_connection") {
    Harness h({.max_requests_per_connection = 2});
    auto c = h.connect();
    CHECK_FALSE(says_close(c.request(h.post(Harness::chat_body()))));
    auto r = c.request(h.post(Harness::chat_body()));
    CHECK(r.result_int() == 200);
    CHECK(says_close(r));
    CHECK(c.closed());
    CHECK(h.settled(2));
  }
  SECTION("100-continue; a relayed upstream error keeps the connection, a body too large closes it") {
    Harness h;
    h.cfg.max_body_bytes = 1000;
    h.upstream.script("a", {Reply::json200});
    h.upstream.script("a", {Reply::status503});
    auto c = h.connect();
    auto body = Harness::chat_body();
    auto req = h.post(body, "/v1/chat/completions", std::nullopt, "Expect: 100-continue\r\n");
    CHECK(c.request(req.substr(0, req.size() - body.size())).result_int() == 100);
    CHECK(c.request(body).result_int() == 200);
    auto r = c.request(h.post(body));
    CHECK(r.result_int() == 503);
    CHECK_FALSE(says_close(r));
    r = c.request(h.post(Harness::chat_body(false, model, R"(,"x":")" + std::string(2000, 'x') + "\"")));
    CHECK(answer_of(r) == "413 request_too_large");
    CHECK(says_close(r));
    CHECK(c.closed());
  }
  SECTION("pipelined requests are served in order") {
    Harness h;
    auto c = h.connect();
    h.upstream.script("a", {Reply::json200});
    h.upstream.script("a", {Reply::sse, 2});
    c.send("GET /v1/nope HTTP/1.1\r\nHost: t\r\n\r\n" + h.post(Harness::chat_body()) +
           h.post(Harness::chat_body(true)) + get_models(h.key));
    // The stream has a request waiting behind it: ClientWatch must not take that for a client gone.
    std::vector<std::pair<unsigned, std::string>> expected{
        {404, "unknown_url"}, {200, R"("content":"hello")"}, {200, "[DONE]"}, {200, R"("object":"list")"}};
    for (const auto& [status, text] : expected) {
      auto r = c.read();
      CHECK(r.result_int() == status);
      CHECK(r.body().find(text) != std::string::npos);
      CHECK_FALSE(says_close(r));
    }
    REQUIRE(h.settled(2));
    CHECK(h.usage.records[1].status == "success");
    CHECK(h.tc.queued == 0);
    CHECK(h.tc.in_flight.empty());
  }
}

TEST_CASE("a client that leaves mid-stream is billed for the events delivered", "[request_path]") {
  Harness h;
  h.upstream.script("a", {Reply::sse_stall, 3});
  auto c = h.connect();
  c.send(h.post(Harness::chat_body(true)));
  auto r = c.read_events(3);
  CHECK(r.result_int() == 200);
  c.close();
  REQUIRE(h.settled());
  REQUIRE(h.usage.records.size() == 1);
  const auto& rec = h.usage.records[0];
  CHECK(rec.status == "client_aborted");
  CHECK(rec.completion_tokens == 3);
  CHECK(rec.upstream == "a");
  CHECK(rec.charge > 0);
  CHECK(rec.charge <= hold_of(rec));
  CHECK(h.admission.settles[0].charge == rec.charge);
  CHECK(h.app->metrics.client_aborts == 1);
  CHECK(h.circuits.get("a")->consecutive_failures() == 0);  // the client left, not the upstream
}

TEST_CASE("settle runs once per admitted request whatever the upstream did; recording once it was reached",
          "[request_path]") {
  Harness h;
  auto c = h.connect();
  Response r;
  std::string status, upstream = "a";
  std::int64_t completion = -1;
  SECTION("200 JSON") {
    CHECK(c.request(h.post(Harness::chat_body())).result_int() == 200);
    status = "success", completion = 5;
  }
  SECTION("200 stream") {
    h.upstream.script("a", {Reply::sse, 4});
    r = c.request(h.post(Harness::chat_body(true)));
    CHECK(r.result_int() == 200);
    CHECK(r.body().find("[DONE]") != std::string::npos);
    status = "success", completion = 4;
  }
  SECTION("503 relayed") {
    h.upstream.script("a", {Reply::status503});
    CHECK(c.request(h.post(Harness::chat_body())).result_int() == 503);
    status = "upstream_error", completion = 0;
  }
  SECTION("closed without an answer: 502") {
    h.upstream.script("a", {Reply::close});
    CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "502 bad_gateway");
    status = "upstream_aborted", completion = 0;
  }
  SECTION("cut mid-stream") {
    h.upstream.script("a", {Reply::sse_cut, 2});
    r = c.request(h.post(Harness::chat_body(true)));
    CHECK(r.result_int() == 200);
    CHECK(r.body().find("upstream_disconnected") != std::string::npos);  // the closing error event
    status = "upstream_aborted", completion = 2;
  }
  SECTION("connect refused: 502, never recorded") {
    h.connector.refuse.insert("a");
    CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "502 bad_gateway");
    upstream.clear();
  }
  REQUIRE(h.settled());
  CHECK(h.admission.admitted.size() == 1);
  REQUIRE(h.admission.settles.size() == 1);
  CHECK(h.admission.settles[0].request_id == h.admission.admitted[0]);
  CHECK(h.intents->open() == 0);
  if (upstream.empty()) {
    CHECK(h.usage.records.empty());
    CHECK(h.admission.settles[0].charge == 0);
    return;
  }
  REQUIRE(h.usage.records.size() == 1);
  const auto& rec = h.usage.records[0];
  CHECK(rec.upstream == upstream);
  CHECK(rec.status == status);
  CHECK(rec.completion_tokens == completion);
  CHECK(rec.request_id == h.admission.admitted[0]);
  CHECK(h.admission.settles[0].charge == rec.charge);
  CHECK(rec.charge <= hold_of(rec));
}

TEST_CASE("fallback: the second upstream serves after the first fails before answering", "[request_path]") {
  Options o{.route = {"a", "b"}};
  std::string failure;
  std::optional<Reply> a_does;  // none: a refuses the connection
  SECTION("connect refused") { failure = "a:connect_failed"; }
  SECTION("503") { failure = "a:status:503"; a_does = Reply::status503; }
  SECTION("429") { failure = "a:status:429"; a_does = Reply::status429; }
  SECTION("closed without an answer") { failure = "a:failed_before_head"; a_does = Reply::close; }
  SECTION("no answer within the response timeout") {
    failure = "a:timed_out";
    a_does = Reply::stall;
    o.upstream_response_timeout = 50ms;
  }
  Harness h(o);
  if (a_does) h.upstream.script("a", {*a_does});
  else h.connector.refuse.insert("a");
  auto c = h.connect();
  CHECK(c.request(h.post(Harness::chat_body())).result_int() == 200);
  REQUIRE(h.settled());
  REQUIRE(h.usage.records.size() == 1);
  CHECK(h.usage.records[0].upstream == "b");
  CHECK(h.usage.records[0].status == "success");
  CHECK(attempts_of(h.usage.records[0]) == std::vector<std::string>{failure});
  CHECK(h.upstream.requests("b") == 1);
  CHECK(h.admission.settles.size() == 1);
}

TEST_CASE("a circuit opens after N failures and its upstream is skipped", "[request_path]") {
  Harness h({.route = {"a", "b"}, .circuit_threshold = 2});
  h.connector.refuse.insert("a");
  auto c = h.connect();
  for (int i = 0; i < 3; ++i) CHECK(c.request(h.post(Harness::chat_body())).result_int() == 200);
  REQUIRE(h.settled(3));
  CHECK(h.connector.acquires["a"] == 2);  // the third request never tried it
  CHECK(h.circuits.get("a")->state() == routing::CircuitState::open);
  REQUIRE(h.usage.records.size() == 3);
  CHECK(attempts_of(h.usage.records[1]) == std::vector<std::string>{"a:connect_failed"});
  CHECK(attempts_of(h.usage.records[2]) == std::vector<std::string>{"a:circuit_open"});
  for (const auto& rec : h.usage.records) CHECK(rec.upstream == "b");
  // b fails twice too: then every circuit is open, and nothing is attempted, recorded or charged.
  h.connector.refuse.insert("b");
  for (int i = 0; i < 2; ++i) CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "502 bad_gateway");
  CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "503 upstream_unavailable");
  REQUIRE(h.settled(6));
  CHECK(h.connector.acquires["b"] == 5);
  CHECK(h.usage.records.size() == 3);
  CHECK(h.admission.settles[5].charge == 0);
}

TEST_CASE("a request that reached an upstream is recorded, naming it, when no upstream served it",
          "[request_path]") {
  Harness h({.route = {"a", "b"}, .circuit_threshold = 1});
  std::vector<std::string> attempts;
  SECTION("a answers 503, b refuses the connection") {
    h.upstream.script("a", {Reply::status503});
    h.connector.refuse.insert("b");
    attempts = {"a:status:503", "b:connect_failed"};
  }
  SECTION("a closes before its head, b is skipped by its open circuit") {
    auto b = h.circuits.get("b");
    auto now = std::chrono::steady_clock::now();
    b->record(b->acquire(now), false, now);
    REQUIRE(b->state() == routing::CircuitState::open);
    h.upstream.script("a", {Reply::close});
    attempts = {"a:failed_before_head", "b:circuit_open"};
  }
  auto c = h.connect();
  auto r = c.request(h.post(Harness::chat_body()));
  CHECK(r.result_int() == 502);
  REQUIRE(h.settled());
  REQUIRE(h.usage.records.size() == 1);
  CHECK(h.usage.records[0].upstream == "a");
  CHECK(h.usage.records[0].status == "upstream_aborted");
  CHECK(h.usage.records[0].charge == 0);
  CHECK(attempts_of(h.usage.records[0]) == attempts);
  CHECK(h.admission.settles[0].charge == 0);
}

TEST_CASE("circuit accounting: a client that leaves is not the upstream's failure, a cut stream is",
          "[request_path]") {
  Harness h({.route = {"a", "b"}, .circuit_threshold = 1});
  auto c = h.connect();
  SECTION("the client leaves while the upstream has not answered") {
    h.upstream.script("a", {Reply::stall});
    c.send(h.post(Harness::chat_body(true)));
    REQUIRE(h.run_until([&] { return h.upstream.requests("a") == 1; }));
    c.close();
    REQUIRE(h.settled());
    CHECK(h.usage.records.at(0).status == "client_aborted");
    CHECK(h.usage.records.at(0).charge == 0);
    CHECK(h.circuits.get("a")->state() == routing::CircuitState::closed);
  }
  SECTION("the upstream cuts its stream: a failure, and no fallback after the first byte") {
    h.upstream.script("a", {Reply::sse_cut, 2});
    CHECK(c.request(h.post(Harness::chat_body(true))).result_int() == 200);
    REQUIRE(h.settled());
    CHECK(h.circuits.get("a")->state() == routing::CircuitState::open);
    CHECK(h.usage.records.at(0).upstream == "a");
    CHECK(h.usage.records.at(0).status == "upstream_aborted");
    CHECK(attempts_of(h.usage.records.at(0)).empty());
  }
  SECTION("a graceful stop's deadline cuts the stream: billed as delivered, not the upstream's failure") {
    h.upstream.script("a", {Reply::sse_stall, 2});
    c.send(h.post(Harness::chat_body(true)));
    c.read_events(2);
    h.app->stopping = true;
    cut_upstreams(h.tc);
    c.read_until("server_shutting_down");  // the closing error event
    REQUIRE(h.settled());
    CHECK(h.usage.records.at(0).status == "upstream_aborted");
    CHECK(h.usage.records.at(0).completion_tokens == 2);
    CHECK(h.circuits.get("a")->state() == routing::CircuitState::closed);
  }
  CHECK(h.upstream.requests("b") == 0);
}

TEST_CASE("503 when a dependency fails; admission failing open checks the key source's balance",
          "[request_path]") {
  ratelimit::Admission down;  // Verdict::unavailable
  SECTION("the key source fails and the key is not cached") {
    Harness h;
    h.key_source.fail = true;
    auto c = h.connect();
    CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "503 auth_unavailable");
    CHECK(h.admission.admitted.empty());
    CHECK(h.upstream.received.empty());
  }
  SECTION("admission fails closed") {
    Harness h;
    h.admission.script.push_back(down);
    auto c = h.connect();
    CHECK(answer_of(c.request(h.post(Harness::chat_body()))) == "503 rate_limiter_unavailable");
  }
  SECTION("admission fails open") {
    Harness h;
    h.cfg.admission.failure_mode = ratelimit::FailureMode::fail_open;
    h.admission.script.push_back(down);
    h.admission.script.push_back(down);
    h.key_source.balances["acct-1"] = 10;
    auto c = h.connect();
    CHECK(c.request(h.post(Harness::chat_body())).result_int() == 402);
    h.key_source.fail = true;  // the key is cached; the balance cannot be read
    auto r = c.request(h.post(Harness::chat_body()));
    CHECK(answer_of(r) == "503 billing_unavailable");
    CHECK(h.app->metrics.failure_mode_allowed == 2);
  }
}

// Transfer-Encoding is HTTP/1.1 only (RFC 9112 §6.1): a stream to an HTTP/1.0 client is
// delimited by the close.
TEST_CASE("an HTTP/1.0 client gets a stream without chunked framing", "[request_path]") {
  Harness h;
  h.upstream.script("a", {Reply::sse, 2});
  auto c = h.connect();
  auto body = Harness::chat_body(true);
  auto r = c.request(fmt::format("POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {}\r\n"
                                 "Content-Length: {}\r\n\r\n{}",
                                 h.key, body.size(), body));
  CHECK(r.result_int() == 200);
  CHECK(r[http::field::transfer_encoding] == "");
  CHECK(says_close(r));
  // The events themselves, without chunk-size lines, up to [DONE].
  CHECK(r.body().rfind("data: ", 0) == 0);
  CHECK(r.body().find("[DONE]") != std::string::npos);
  CHECK(r.body().find("\r\n") == std::string::npos);
}


TEST_CASE("the Messages API: x-api-key, Anthropic's error shape, the upstream path", "[request_path]") {
  Harness h;
  auto c = h.connect();
  auto anthropic_error = [](const Response& r) {
    auto v = boost::json::parse(r.body()).as_object();
    CHECK(v.at("type").as_string() == "error");
    return std::to_string(r.result_int()) + " " + std::string(v.at("error").as_object().at("type").as_string());
  };
  const std::string body = fmt::format(R"({{"model":"{}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]}})", model);
  auto raw = [&](std::string_view auth_line, std::string_view b) {
    return fmt::format("POST /v1/messages HTTP/1.1\r\nHost: t\r\n{}anthropic-version: 2023-06-01\r\n"
                       "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                       auth_line, b.size(), b);
  };
  auto r = c.request(raw("", body));
  CHECK(anthropic_error(r) == "401 authentication_error");
  auto c2 = h.connect();  // a refused POST's connection is closed (its body unread)
  r = c2.request(raw("x-api-key: tg_bad\r\n", body));
  CHECK(anthropic_error(r) == "401 authentication_error");
  auto c3 = h.connect();
  r = c3.request(raw(fmt::format("x-api-key: {}\r\n", h.key), fmt::format(R"({{"model":"{}","messages":[]}})", model)));
  CHECK(anthropic_error(r) == "400 invalid_request_error");
  CHECK(r.body().find("max_tokens: Field required") != std::string::npos);
  r = c3.request(raw(fmt::format("x-api-key: {}\r\n", h.key), body));
  CHECK(r.result_int() == 200);
  REQUIRE(h.upstream.received.size() == 1);
  CHECK(h.upstream.received[0].target.ends_with("/messages"));
  CHECK(h.upstream.received[0].anthropic_version == "2023-06-01");  // passed through
  CHECK(h.upstream.received[0].x_api_key.empty());                  // the client's key never goes upstream
  h.admission.script.push_back(FakeAdmission::insufficient(5));
  r = c3.request(raw(fmt::format("x-api-key: {}\r\n", h.key), body));
  CHECK(anthropic_error(r) == "402 billing_error");
  h.admission.script.push_back(FakeAdmission::rate_limited(1500));
  r = c3.request(raw(fmt::format("Authorization: Bearer {}\r\n", h.key), body));
  CHECK(anthropic_error(r) == "429 rate_limit_error");
  CHECK(r["retry-after"] == "2");
  CHECK(h.session_errors.empty());
}

TEST_CASE("GET /v1/models/{id}: percent-encoded or not; an unknown model is a 404", "[request_path]") {
  Harness h;
  auto c = h.connect();
  auto get = [&](std::string_view target) {
    return c.request(fmt::format("GET {} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n", target, h.key));
  };
  for (std::string target : {std::string("/v1/models/test/model"), std::string("/v1/models/test%2Fmodel")}) {
    auto r = get(target);
    REQUIRE(r.result_int() == 200);
    auto m = boost::json::parse(r.body()).as_object();
    CHECK(m.at("id").as_string() == model);
    CHECK(m.at("object").as_string() == "model");
    CHECK(m.at("owned_by").as_string() == "test");
    CHECK(m.at("pricing").as_object().at("prompt").as_string() == "0.000001");  // 1 credit unit per token
  }
  CHECK(answer_of(get("/v1/models/test/other")) == "404 model_not_found");
  auto list = get("/v1/models");
  REQUIRE(list.result_int() == 200);
  CHECK(boost::json::parse(list.body()).at("data").as_array().size() == 1);
  CHECK(answer_of(get("/v1/models/%zz")) == "400 bad_request");  // the request parser's check on targets
}
