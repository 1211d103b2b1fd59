"""Wall time of `aurora ... --help`: cold (AURORA_HELP_CACHE=0), first with a fresh cache dir, then warm."""
import json, os, subprocess, sys, tempfile, time
AURORA = sys.argv[1]
CMDS = [["--help"], ["fit", "--help"], ["data", "--help"], ["ask", "--help"], ["pretrain-vision", "--help"]]
def t(args, env):
    s = time.perf_counter(); r = subprocess.run([AURORA, *args], env=env, capture_output=True, text=True)
    assert r.returncode == 0, (args, r.stderr[-500:])
    return round(time.perf_counter() - s, 2)
rows = {}
with tempfile.TemporaryDirectory() as cache:
    for c in CMDS:
        base = dict(os.environ, OMP_NUM_THREADS="1")
        cold = t(c, base | {"AURORA_HELP_CACHE": "0"})
        first = t(c, base | {"AURORA_CACHE": cache})
        warm = t(c, base | {"AURORA_CACHE": cache})
        rows[" ".join(["aurora", *c])] = {"no cache": cold, "fresh cache, first": first, "warm": warm}
print(os.popen("uptime").read().strip())
for k, v in rows.items():
    print(f"{k:32s} {v}")
