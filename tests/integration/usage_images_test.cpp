// Issue 13: usage rows count image output tokens and generated images, whichever way the usage
// writer records them (COPY, record_usage() for replayed journal lines), and journal lines
// written before records carried them replay with 0.
#include "db_fixture.hpp"
#include "sql/usage_writer.hpp"

#include <array>
#include <filesystem>
#include <fstream>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

namespace {
sql::UsageRecord image_usage(const std::string& user, std::int64_t image_tokens, std::int64_t images) {
  sql::UsageRecord r;
  r.request_id = unique("img_");
  r.user_id = user;
  r.model = "it/image-model";
  r.prompt_tokens = 20;
  r.completion_tokens = 1400;
  r.reasoning_tokens = 10;
  r.image_tokens = image_tokens;
  r.images_generated = images;
  r.cost = 39'000;
  r.charge = 46'800;
  r.status = "success";
  r.upstream = "it-upstream";
  r.upstream_cost = 39'000'000'000;
  r.created_at_us = 1'700'000'000'000'000;
  return r;
}

/// (image_tokens, images_generated, reasoning_tokens, completion_tokens) of a request's usage row.
std::array<std::int64_t, 4> image_columns(sql::PgConn& db, const std::string& request_id) {
  auto r = db.exec("SELECT image_tokens, images_generated, reasoning_tokens, completion_tokens FROM usage_logs"
                   " WHERE request_id = $1",
                   {request_id});
  REQUIRE(r.rows() == 1);
  return {r.i64(0, 0), r.i64(0, 1), r.i64(0, 2), r.i64(0, 3)};
}

std::filesystem::path journal_dir() { return std::filesystem::temp_directory_path() / unique("tollgate-journal-"); }
}  // namespace

TEST_CASE("usage rows record image tokens and generated images by COPY and by record_usage()", "[usage][images]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "5");
  auto by_copy = image_usage(user, 1290, 0), by_copy_images = image_usage(user, 0, 3);
  auto by_sql = image_usage(user, 1290, 2);
  auto dir = journal_dir();
  {
    sql::UsageWriter w(dir, database_url(), 100, 5ms);
    w.append(by_copy);
    w.append(by_copy_images);
    w.start();
    REQUIRE(w.flush(10s));
    w.stop();
    CHECK(w.stats().copy_batches == 1);
  }
  std::filesystem::remove_all(dir);
  std::string batch = "[";
  by_sql.append_json(batch);
  batch += "]";
  CHECK(batch.find(R"("image_tokens":1290,"images_generated":2)") != std::string::npos);
  db.exec("SELECT * FROM record_usage($1::jsonb)", {batch});
  CHECK(image_columns(db, by_copy.request_id) == std::array<std::int64_t, 4>{1290, 0, 10, 1400});
  CHECK(image_columns(db, by_copy_images.request_id) == std::array<std::int64_t, 4>{0, 3, 10, 1400});
  CHECK(image_columns(db, by_sql.request_id) == std::array<std::int64_t, 4>{1290, 2, 10, 1400});
  // Both paths give the same row otherwise too.
  auto same = "SELECT prompt_tokens, completion_tokens, total_tokens, cost_usd, credits_deducted, status, upstream,"
              " upstream_cost_usd, cached_tokens, cache_write_tokens, reasoning_tokens FROM usage_logs WHERE request_id = $1";
  auto x = db.exec(same, {by_copy.request_id}), y = db.exec(same, {by_sql.request_id});
  for (int c = 0; c < 11; ++c) CHECK(x.str(0, c) == y.str(0, c));
}

TEST_CASE("journal lines written before records counted images replay with 0 image tokens and images", "[usage][images]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "5");
  auto old_line = image_usage(user, 0, 0), new_line = image_usage(user, 700, 4);
  std::string old_json = old_line.to_json();
  // The line as a writer before migration 0009 wrote it: no image members at all.
  auto cut = old_json.find(R"(,"image_tokens":0,"images_generated":0)");
  REQUIRE(cut != std::string::npos);
  old_json.erase(cut, std::string_view(R"(,"image_tokens":0,"images_generated":0)").size());
  REQUIRE(old_json.find("image_tokens") == std::string::npos);
  REQUIRE(old_json.find("images_generated") == std::string::npos);
  auto dir = journal_dir();
  std::filesystem::create_directories(dir);
  {
    std::ofstream seg(dir / "00000000000000000001.jsonl");
    seg << old_json << "\n" << new_line.to_json() << "\n";
  }
  {
    sql::UsageWriter w(dir, database_url(), 100, 5ms);
    CHECK(w.stats().replayed == 2);
    w.start();
    REQUIRE(w.flush(10s));
    w.stop();
    CHECK(w.stats().committed == 2);
  }
  std::filesystem::remove_all(dir);
  CHECK(image_columns(db, old_line.request_id) == std::array<std::int64_t, 4>{0, 0, 10, 1400});
  CHECK(image_columns(db, new_line.request_id) == std::array<std::int64_t, 4>{700, 4, 10, 1400});
}
