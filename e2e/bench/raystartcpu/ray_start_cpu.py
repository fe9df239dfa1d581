"""CPU seconds and wall seconds of one `ray start`, head and worker, as the agent runs them.

    python ray_start_cpu.py [--runs 3] [--variants token,notoken,nodashboard]
    python ray_start_cpu.py --smoke   # one short run, checked for sanity (make test runs it)

Runs on one host, on loopback: a head, then a worker joining it, each `ray start --block` with
its own temp dir; when its output says "Ray runtime started", it sums the CPU time (user +
system) of the `ray start` process, its reaped children and its live descendants, then again
10 s later, once the node has settled. Then it kills
exactly those processes (never a blanket `ray stop`). Prints one JSON line per measurement.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # utime, stime, cutime, cstime are fields 14-17 (1-based), here 11-14 after pid and comm
    return int(fields[1]), [int(x) for x in fields[11:15]]


def descendants(root):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid, _ = stat(int(p))
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def cpu(root):
    total = 0
    for i, p in enumerate([root] + descendants(root)):
        try:
            _, t = stat(p)
        except OSError:
            continue
        total += t[0] + t[1] + (t[2] + t[3] if i == 0 else 0)
    return total / TICK


def start(args, env, tmp):
    t0 = time.time()
    p = subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", "--temp-dir", tmp, "--num-cpus", "1"] + args,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in p.stdout:
        if "Ray runtime started" in line:
            return p, time.time() - t0
    raise RuntimeError("ray start ended: " + str(p.wait()))


def stop(p):
    pids = [p.pid] + descendants(p.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default="token,notoken,nodashboard")
    ap.add_argument("--smoke", action="store_true", help="one run of the token variant, 1 s to settle, checked for sanity")
    a = ap.parse_args()
    settle = 10
    if a.smoke:
        a.runs, a.variants, settle = 1, "token", 1
    seen = []
    for run in range(1, a.runs + 1):
        for variant in a.variants.split(","):
            env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
            with tempfile.TemporaryDirectory(prefix="raycpu-") as d:
                if variant != "notoken":
                    tok = os.path.join(d, "token")
                    with open(tok, "w") as f:
                        f.write(os.urandom(16).hex() + "\n")
                    os.chmod(tok, 0o600)
                    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=tok)
                dash = "false" if variant == "nodashboard" else "true"
                head, hwall = start(["--head", "--node-ip-address", "127.0.0.1", "--port", "26379", "--include-dashboard", dash,
                                     "--dashboard-host", "127.0.0.1", "--dashboard-port", "28265", "--ray-client-server-port", "20001"],
                                    env, os.path.join(d, "h"))
                hcpu = cpu(head.pid)
                worker, wwall = start(["--address", "127.0.0.1:26379", "--node-ip-address", "127.0.0.1",
                                       "--node-manager-port", "26500", "--object-manager-port", "26600"], env, os.path.join(d, "w"))
                wcpu = cpu(worker.pid)
                # And once both have settled: what a node's Ray costs in its first 10 s.
                time.sleep(settle)
                hsettled, wsettled = cpu(head.pid), cpu(worker.pid)
                stop(worker)
                stop(head)
                for role, wall, c, settled in (("head", hwall, hcpu, hsettled), ("worker", wwall, wcpu, wsettled)):
                    print(json.dumps({"run": run, "variant": variant, "role": role, "wall_s": round(wall, 2), "cpu_s": round(c, 2),
                                      "cpu_s_after_10s": round(settled, 2)}), flush=True)
                    seen.append((role, wall, c, settled))
    if a.smoke:
        # Whatever the speed: both roles measured, some CPU spent, and none given back.
        bad = [x for x in seen if not (0 < x[1] < 120 and 0 < x[2] <= x[3])]
        if len(seen) != 2 or bad:
            print("ray_start_cpu smoke: not measurements: %s" % seen, file=sys.stderr)
            return 1
        print("ray_start_cpu smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
