# Writes OUT: a C++ file holding every migration in FILES as (name, SQL) pairs.
set(body "#include <string>\n#include <utility>\n#include <vector>\nnamespace tollgate::sql {\n"
         "const std::vector<std::pair<std::string, std::string>>& embedded_migrations() {\n"
         "  static const std::vector<std::pair<std::string, std::string>> m = {\n")
foreach(f IN LISTS FILES)
  get_filename_component(name ${f} NAME)
  file(READ ${f} sql)
  string(APPEND body "    {\"${name}\", R\"tgsql(${sql})tgsql\"},\n")
endforeach()
string(APPEND body "  };\n  return m;\n}\n}  // namespace tollgate::sql\n")
file(WRITE ${OUT} "${body}")
