#!/usr/bin/env python3
"""Process figures for bench/run.sh, read from /proc.

  proctool.py tree PID...   the PIDs and all their descendants, one line
  proctool.py cpu PID...    CPU seconds used by those trees: utime + stime of
                            every live process, plus cutime + cstime (the
                            children already reaped), so the time of
                            per-connection children that came and went counts
  proctool.py mem PID...    "pss_kib private_kib" summed over the trees from
                            /proc/PID/smaps_rollup; Pss splits shared pages
                            between the processes that map them, so the sum
                            over a forking tunnel is its real footprint
  proctool.py mem-median PID...  the median over the PIDs of each one's
                            tree Pss in KiB (one figure for many agents)
  proctool.py iperf FILE    Gbit/s received from an iperf3 --json report

Exit codes: 0 done, 1 unreadable input (an iperf3 error), 2 bad usage.
"""
import json
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_PROCS = 200000  # bound on the /proc walk


def stat_fields(pid):
    """Fields after the command name of /proc/PID/stat (the name may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def children_map():
    kids = {}
    for n, name in enumerate(os.listdir("/proc")):
        if n >= MAX_PROCS:
            break
        if not name.isdigit():
            continue
        try:
            ppid = int(stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(roots):
    kids = children_map()
    seen, order, todo = set(), [], [int(p) for p in roots]
    while todo and len(order) < MAX_PROCS:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        order.append(p)
        todo.extend(kids.get(p, []))
    return [p for p in order if os.path.exists(f"/proc/{p}")]


def cpu_seconds(pid):
    try:
        f = stat_fields(pid)
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); f starts at 3.
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def mem_kib(pid):
    pss = priv = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss += int(rest.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    priv += int(rest.split()[0])
    except OSError:
        pass
    return pss, priv


def iperf_gbps(path):
    with open(path) as f:
        report = json.load(f)
    if "error" in report:
        raise ValueError(report["error"])
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "tree":
        print(" ".join(str(p) for p in tree(args)))
    elif cmd == "cpu":
        print("%.3f" % sum(cpu_seconds(p) for p in tree(args)))
    elif cmd == "mem":
        pss = priv = 0
        for p in tree(args):
            a, b = mem_kib(p)
            pss, priv = pss + a, priv + b
        print(pss, priv)
    elif cmd == "mem-median" and args:
        sizes = sorted(sum(mem_kib(p)[0] for p in tree([r])) for r in args)
        print(sizes[(len(sizes) - 1) // 2])
    elif cmd == "iperf" and len(args) == 1:
        try:
            print("%.4f" % iperf_gbps(args[0]))
        except (OSError, ValueError, KeyError) as e:
            print(f"iperf3: {e}", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
