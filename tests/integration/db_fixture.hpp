#pragma once
// Shared helpers for integration tests: a real PostgreSQL from TOLLGATE_DATABASE_URL (started by
// tests/run.sh), unique accounts per test so tests never disturb each other.
#include "sql/pg.hpp"
#include "sql/store.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <random>
#include <string>

namespace tollgate::test {

inline std::string database_url() {
  const char* url = std::getenv("TOLLGATE_DATABASE_URL");
  if (!url || !*url) FAIL("TOLLGATE_DATABASE_URL is not set: run tests through tests/run.sh");
  return url;
}

inline std::string unique(const std::string& prefix) {
  static std::mt19937_64 rng{std::random_device{}()};
  return prefix + std::to_string(rng());
}

/// A fresh account with `usd` of credits; returns its id.
inline std::string funded_account(sql::PgConn& db, const std::string& usd) {
  auto id = sql::create_account(db, unique("it") + "@example.com");
  if (usd != "0") sql::add_credits(db, id, usd, std::string("test funding"));
  return id;
}

}  // namespace tollgate::test
