#!/usr/bin/env python3
"""What the fence costs an add, in Redis: the shipped add_message against the same library without
its fence(ARGV) line, alternately under redis-benchmark (docs/performance.md, "Fenced writes").
Usage: bench/fence_ab.py <free port, not 6379> <release mpr binary> [calls per run]"""
import subprocess, time, os, re, sys, socket
P = int(sys.argv[1]); assert P != 6379; MPR = sys.argv[2]; N = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
def cli(*a, inp=None):
    return subprocess.run(["redis-cli", "-p", str(P), *a], input=inp, capture_output=True, text=True).stdout
redis = subprocess.Popen(["redis-server", "--port", str(P), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
time.sleep(0.5)
env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{P}", WS_PORT="0", APP_PORT="0", BIND_ADDRESS="127.0.0.1", LOG_LEVEL="warn")
mpr = subprocess.Popen([MPR], env=env, stdout=subprocess.DEVNULL)
for _ in range(100):
    if "mpr_" in cli("FUNCTION", "LIST"): break
    time.sleep(0.1)
mpr.terminate(); mpr.wait()
out = cli("--raw", "FUNCTION", "LIST", "WITHCODE")
code = out[out.index("#!lua"):].rstrip("\n")
version = re.search(r"#!lua name=mpr_([0-9a-f]{12})", code).group(1)
nofence = code.replace("  fence(ARGV)\n", "").replace(version, "nofence")
assert "fence(ARGV)\n" not in nofence.replace("local function fence(ARGV)\n", "")
print(cli("-x", "FUNCTION", "LOAD", inp=nofence).strip())
keys = [f"ceil:{{c__rand_int__}}:{k}" for k in ["msg", "seq", "conn", "pending", "inflight", "pushed"]] + \
       [f"ceil:{{c__rand_int__}}:d:did:x:{k}" for k in ["pending", "inflight"]]
now = str(int(time.time() * 1000))
tail = "0\t1024\t" + now + "\tdid:x\n" + '{"x":"' + "a" * 1000 + '"}'
args = ["__rand_int____rand_int____rand_int____rand_int__", now, "30000", "0", "0", "0", "did:x"]
def bench(name, fenced):
    cmd = ["FCALL", f"add_message_{version if fenced else 'nofence'}", "8", *keys]
    if fenced: cmd.append(str(int(time.time() * 1000) + 3600_000))
    cmd += args
    cli("FLUSHALL"); cli("CONFIG", "RESETSTAT")
    r = subprocess.run(["redis-benchmark", "-p", str(P), "-c", "32", "-n", str(N), "-r", "1000", "--csv", "-x", *cmd], input=tail, capture_output=True, text=True).stdout
    rps = float(r.strip().splitlines()[-1].split('","')[1])
    stats = cli("INFO", "commandstats")
    us = float(re.search(r"cmdstat_fcall:calls=\d+,usec=\d+,usec_per_call=([0-9.]+)", stats).group(1))
    errs = re.search(r"cmdstat_fcall:.*failed_calls=(\d+)", stats).group(1)
    stored = cli("DBSIZE").strip()
    print(f"{name}: {rps:.0f} calls/s, {us:.2f} us per call (Redis), failed {errs}, keys {stored}", flush=True)
    return rps, us
res = {"fenced": [], "unfenced": []}
for i in range(3):
    res["unfenced"].append(bench("unfenced", False))
    res["fenced"].append(bench("fenced", True))
for k, v in res.items():
    rs = sorted(x[0] for x in v); us = sorted(x[1] for x in v)
    print(f"median {k}: {rs[1]:.0f} calls/s, {us[1]:.2f} us per call")
redis.terminate()
