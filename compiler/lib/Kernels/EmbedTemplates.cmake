# Writes OUTPUT: a C++ header with one string constant per kernel template,
# so the compiler carries its kernels in the binary, and a table of them by
# name (the template file's name without .mlir).
set(content "// Generated from compiler/lib/Kernels/templates/ by EmbedTemplates.cmake.\n#pragma once\n")
set(table "struct KernelTemplate {\n  const char *name;\n  const char *text;\n};\ninline constexpr KernelTemplate k_kernel_templates[] = {\n")
foreach(template ${TEMPLATES})
  get_filename_component(name ${template} NAME_WE)
  file(READ ${template} text)
  string(APPEND content "inline constexpr const char k_${name}_template[] = R\"mlir(${text})mlir\";\n")
  string(APPEND table "    {\"${name}\", k_${name}_template},\n")
endforeach()
string(APPEND table "};\n")
file(WRITE ${OUTPUT} "${content}${table}")
