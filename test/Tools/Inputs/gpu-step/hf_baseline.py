# Stand-in for hf_baseline.py in gpu-step-table.test: HF's step takes 200 ms
# for llama2-7b and 220 ms for llama3-8b, the GPU at 1850 MHz and
# 640 W while busy, held down only by the software thermal limit (0x20).
import json, os, sys, time

with open("load", "w") as f:
    f.write("1850, 640, 0x0000000000000020\n")
open("busy", "w").close()
time.sleep(0.4)
os.remove("busy")
ms = {"llama2-7b": 200.0, "llama3-8b": 220.0}[sys.argv[2]]
print("RESULT " + json.dumps({"model": sys.argv[2], "mode": sys.argv[1], "step_ms": ms}))
