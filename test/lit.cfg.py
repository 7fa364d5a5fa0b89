# lit configuration: runs FileCheck tests through llamac-opt and llamac.
import os

import lit.formats
from lit.llvm import llvm_config

config.name = "llamac"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py", "unit", "golden", "gpu"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.llamac_obj_root, "test")
config.substitutions.append(("%configs", os.path.join(config.llamac_src_root, "test", "configs")))
config.substitutions.append(("%bench", os.path.join(config.llamac_src_root, "bench")))

llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.add_tool_substitutions(["llamac-opt", "llamac", "llamac-run"], [config.llamac_tools_dir])
