#include "sql/pg.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <vector>

namespace tollgate::sql {
namespace {

PgError error_from(PGconn* c, PGresult* r, const char* what) {
  std::string msg = what;
  const char* m = r ? PQresultErrorMessage(r) : (c ? PQerrorMessage(c) : "");
  if (m && *m) msg += std::string(": ") + m;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  const char* st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  return PgError(msg, st ? st : "");
}

void ignore_notice(void*, const PGresult*) {}  // NOTICEs (e.g. "already exists") are not errors

}  // namespace

std::int64_t PgResult::i64(int row, int col) const {
  auto s = get(row, col);
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size())
    throw PgError("not an integer: column " + std::to_string(col), "");
  return v;
}

PgConn::PgConn(const std::string& url, std::chrono::milliseconds statement_timeout)
    : conn_(nullptr, &PQfinish) {
  std::string timeout = "-c statement_timeout=" + std::to_string(statement_timeout.count());
  const char* keys[] = {"dbname", "connect_timeout", "options", "application_name", nullptr};
  const char* vals[] = {url.c_str(), "5", timeout.c_str(), "tollgate", nullptr};
  conn_.reset(PQconnectdbParams(keys, vals, /*expand_dbname=*/1));
  if (!conn_ || PQstatus(conn_.get()) != CONNECTION_OK)
    throw error_from(conn_.get(), nullptr, "cannot connect to PostgreSQL");
  PQsetNoticeReceiver(conn_.get(), &ignore_notice, nullptr);
}

PgResult PgConn::exec(const char* sql, std::initializer_list<std::optional<std::string_view>> params) {
  std::vector<std::string> storage;  // libpq wants NUL-terminated values
  std::vector<const char*> values;
  storage.reserve(params.size());
  for (const auto& p : params) {
    if (p) {
      storage.emplace_back(*p);
      values.push_back(storage.back().c_str());
    } else {
      values.push_back(nullptr);
    }
  }
  PgResult r(PQexecParams(conn_.get(), sql, static_cast<int>(values.size()), nullptr,
                          values.data(), nullptr, nullptr, 0));
  auto st = PQresultStatus(r.raw());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw error_from(conn_.get(), r.raw(), "query failed");
  return r;
}

namespace {
// The first error among the results left on the connection (a COPY the server ended), else a
// connection error. Drains every result so the connection can be used (rolled back) again.
PgError drain_error(PGconn* c, const char* what) {
  std::optional<PgError> err;
  while (PGresult* raw = PQgetResult(c)) {
    PgResult r(raw);
    auto st = PQresultStatus(raw);
    if (st == PGRES_COPY_IN) {  // still copying: end it, then read the outcome
      if (PQputCopyEnd(c, "aborted by client") == 1) continue;
      break;  // the connection is gone: PQerrorMessage says why
    }
    if (!err && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) err = error_from(c, raw, what);
  }
  return err ? *err : error_from(c, nullptr, what);
}
}  // namespace

void PgConn::copy_begin(const char* sql) {
  PgResult r(PQexec(conn_.get(), sql));
  if (PQresultStatus(r.raw()) != PGRES_COPY_IN) throw error_from(conn_.get(), r.raw(), "COPY failed");
}

void PgConn::copy_data(std::string_view data) {
  constexpr std::size_t chunk = 1 << 20;
  while (!data.empty()) {
    std::size_t n = std::min(data.size(), chunk);
    if (PQputCopyData(conn_.get(), data.data(), static_cast<int>(n)) != 1)
      throw drain_error(conn_.get(), "COPY failed");  // e.g. the server ended the COPY early
    data.remove_prefix(n);
  }
}

std::int64_t PgConn::copy_end() {
  if (PQputCopyEnd(conn_.get(), nullptr) != 1) throw drain_error(conn_.get(), "COPY failed");
  std::int64_t rows = -1;
  std::optional<PgError> err;
  while (PGresult* raw = PQgetResult(conn_.get())) {
    PgResult r(raw);
    if (PQresultStatus(raw) == PGRES_COMMAND_OK) {
      if (rows < 0) rows = std::atoll(PQcmdTuples(raw));
    } else if (!err) {
      err = error_from(conn_.get(), raw, "COPY failed");
    }
  }
  if (err) throw *err;
  if (rows < 0) throw error_from(conn_.get(), nullptr, "COPY failed");
  return rows;
}

void PgConn::copy_abort() noexcept {
  // PQputCopyEnd fails (harmlessly) when no COPY is in progress.
  if (conn_ && PQputCopyEnd(conn_.get(), "aborted by client") == 1)
    while (PGresult* raw = PQgetResult(conn_.get())) PQclear(raw);
}

void PgConn::exec_script(const std::string& sql) {
  PgResult r(PQexec(conn_.get(), sql.c_str()));
  auto st = PQresultStatus(r.raw());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) throw error_from(conn_.get(), r.raw(), "script failed");
}

}  // namespace tollgate::sql
