# Writes OUT: the Lua scripts in DIR as C strings (embedded_<name>_lua) for ratelimit/admission.cpp.
set(body "namespace tollgate::ratelimit {\n")
foreach(name admit settle sync epoch restore sweep extend spend_seed)
  file(READ ${DIR}/${name}.lua src)
  string(APPEND body "extern const char* const embedded_${name}_lua;\n"
                     "const char* const embedded_${name}_lua = R\"tglua(${src})tglua\";\n")
endforeach()
string(APPEND body "}  // namespace tollgate::ratelimit\n")
file(WRITE ${OUT} "${body}")
