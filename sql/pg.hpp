#pragma once
// A small RAII wrapper over libpq (blocking). Used off the event loop only: by CLI commands, the
// lookup pool (keys/balances on cache miss), the NOTIFY listener and the usage writer thread.
#include <libpq-fe.h>

#include <chrono>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tollgate::sql {

/// A libpq error. `sqlstate` is the 5-character SQLSTATE when the server sent one, else "".
struct PgError : std::runtime_error {
  PgError(const std::string& what, std::string state)
      : std::runtime_error(what), sqlstate(std::move(state)) {}
  std::string sqlstate;
};

/// Owns a PGresult.
class PgResult {
 public:
  explicit PgResult(PGresult* r) : r_(r, &PQclear) {}
  int rows() const { return PQntuples(r_.get()); }
  bool is_null(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view get(int row, int col) const {
    return {PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col))};
  }
  std::string str(int row, int col) const { return std::string(get(row, col)); }
  std::int64_t i64(int row, int col) const;
  bool boolean(int row, int col) const { return get(row, col) == "t"; }
  PGresult* raw() const { return r_.get(); }

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> r_;
};

/// One blocking connection. Every statement runs under `statement_timeout`.
class PgConn {
 public:
  /// Connects to a libpq URL/conninfo (e.g. postgresql://user@127.0.0.1:5432/db).
  /// Throws PgError on failure (message without the password).
  explicit PgConn(const std::string& url,
                  std::chrono::milliseconds statement_timeout = std::chrono::seconds(10));

  /// Runs a statement with text parameters ($1, $2 …; nullopt = NULL). Throws PgError.
  PgResult exec(const char* sql, std::initializer_list<std::optional<std::string_view>> params = {});
  /// Runs several statements with no parameters (migrations). Throws PgError.
  void exec_script(const std::string& sql);

  /// Bulk load, `COPY … FROM STDIN` in text format: copy_begin(sql), copy_data() any number of
  /// times with complete or partial rows (each row ends in '\n'; values escaped as COPY text
  /// wants), then copy_end(), which returns the number of rows copied. Each throws PgError; a
  /// row the server refuses surfaces with its SQLSTATE (e.g. "23505" for a unique violation) from
  /// copy_data() or copy_end(), and the transaction is then aborted (roll it back). After a
  /// throw, call copy_abort() if a copy_begin() succeeded and copy_end() was not reached.
  void copy_begin(const char* sql);
  void copy_data(std::string_view data);
  std::int64_t copy_end();
  /// Ends a COPY still in progress with an error (nothing is loaded); a no-op otherwise.
  void copy_abort() noexcept;

  bool healthy() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }
  PGconn* raw() const { return conn_.get(); }

 private:
  std::unique_ptr<PGconn, void (*)(PGconn*)> conn_;
};

}  // namespace tollgate::sql
