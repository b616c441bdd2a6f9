#!/usr/bin/env python3
"""Turns bench/out/results.tsv into the table, the ratios and the chart.

usage: report.py OUT_DIR CHART_GP

Reads OUT_DIR/results.tsv (metric, system, run, value; "NA" rows carry a
reason) and OUT_DIR/machine.txt.  Prints the table of medians with min-max,
the ratios atun / baseline with the issue's targets, and the core figures;
writes the same text to OUT_DIR/table.txt, a Markdown version for the README
to OUT_DIR/summary.md, the chart's data to OUT_DIR/chart-*.dat and, when
gnuplot is there, OUT_DIR/chart.png.

Exit codes: 0 done, 2 bad usage or no results file.
"""
import os
import statistics
import subprocess
import sys

SYSTEMS = [
    ("direct", "direct TCP"),
    ("socat", "socat 2-hop"),
    ("ssh", "ssh -L gcm"),
    ("stunnel", "stunnel mTLS"),
    ("atun", "atun fwd"),
    ("atun_socks5", "atun socks5"),
]

# metric, label, digits
ROWS = [
    ("tput1_gbps", "throughput, 1 conn (Gbit/s)", 2),
    ("tput8_gbps", "throughput, 8 conns (Gbit/s)", 2),
    ("cpu1_cores_per_gbps", "CPU cores per Gbit/s, 1 conn", 3),
    ("cpu8_cores_per_gbps", "CPU cores per Gbit/s, 8 conns", 3),
    ("pp_p50_us", "64 B round trip p50 (us)", 1),
    ("pp_p99_us", "64 B round trip p99 (us)", 1),
    ("pp_pin_p50_us", "  pinned to 1 CPU, p50 (us)", 1),
    ("pp_pin_p99_us", "  pinned to 1 CPU, p99 (us)", 1),
    ("conn_p50_us", "connect->first byte p50 (us)", 1),
    ("conn_p99_us", "connect->first byte p99 (us)", 1),
    ("conn_fails", "  failed connects per run", 0),
    ("mem_conn_kib", "idle conn: tunnel Pss (KiB/conn)", 1),
    ("mem_conn_gw_kib", "idle conn: gateway private (KiB)", 1),
    ("mem_agent_kib", "idle agent: gateway private (KiB)", 1),
    ("agent_pss_kib", "agent process Pss (KiB)", 0),
]


def load(out):
    data, na = {}, {}
    with open(os.path.join(out, "results.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            metric, system, _, value = parts
            if metric == "NA":
                na[system] = value
                continue
            try:
                data.setdefault((metric, system), []).append(float(value))
            except ValueError:
                pass
    return data, na


def stats(values):
    return statistics.median(values), min(values), max(values)


def fmt(v, digits):
    """At most |digits| decimals, fewer for large values (noise anyway)."""
    if abs(v) >= 100:
        digits = 0
    elif abs(v) >= 10:
        digits = min(digits, 1)
    return f"{v:.{digits}f}"


def cell(data, metric, system, digits):
    """(median, "min-max") as text; ("-", "") without a figure."""
    values = data.get((metric, system))
    if not values:
        return "-", ""
    mid, lo, hi = stats(values)
    if len(values) == 1 or lo == hi:
        return fmt(mid, digits), ""
    return fmt(mid, digits), f"{fmt(lo, digits)}-{fmt(hi, digits)}"


def med(data, metric, system):
    values = data.get((metric, system))
    return statistics.median(values) if values else None


def div(x, y):
    return x / y if x is not None and y else None


def table_rows(data):
    """[label, (median, range) per system] for every metric with a figure."""
    rows = []
    for metric, label, digits in ROWS:
        cells = [cell(data, metric, s, digits) for s, _ in SYSTEMS]
        if any(c[0] != "-" for c in cells):
            rows.append([label] + cells)
    return rows


def text_table(rows):
    """Medians on one line, min-max on the next, so the table stays narrow."""
    head = ["median, then min-max"] + [label for _, label in SYSTEMS]
    lines = [head]
    for r in rows:
        lines.append([r[0]] + [c[0] for c in r[1:]])
        if any(c[1] for c in r[1:]):
            lines.append([""] + [c[1] for c in r[1:]])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(r, widths))).rstrip() for r in lines]
    out.insert(1, "-" * len(out[0]))
    return out


def md_table(rows):
    head = ["median (min-max)"] + [label for _, label in SYSTEMS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [c[0] + (f" ({c[1]})" if c[1] else "") for c in r[1:]]
        out.append("| " + " | ".join([r[0].strip()] + cells) + " |")
    return out


def verdict(value, op, limit):
    ok = value >= limit if op == ">=" else value <= limit
    return "met" if ok else "NOT met"


def target_lines(data, na):
    """The issue's targets, each with its figure and whether it is met."""
    def ratio(metric, a, b):
        return div(med(data, metric, a), med(data, metric, b))

    checks = [
        ("1 conn throughput atun / ssh -L", ratio("tput1_gbps", "atun", "ssh"), ">=", 1.3, "x"),
        ("1 conn throughput atun / stunnel", ratio("tput1_gbps", "atun", "stunnel"), ">=", 2.0, "x"),
        ("8 conns throughput atun / ssh -L", ratio("tput8_gbps", "atun", "ssh"), ">=", 1.2, "x"),
        ("gateway+agent cores per Gbit/s, 1 conn", med(data, "cpu1_cores_per_gbps", "atun"), "<=", 0.3, ""),
        ("gateway+agent cores per Gbit/s, 8 conns", med(data, "cpu8_cores_per_gbps", "atun"), "<=", 0.3, ""),
        ("round trip p50 atun / socat 2-hop", ratio("pp_p50_us", "atun", "socat"), "<=", 1.0, "x"),
        ("round trip p99 / p50 (atun)",
         div(med(data, "pp_p99_us", "atun"), med(data, "pp_p50_us", "atun")), "<=", 2.0, "x"),
        ("connect->first byte p50 (atun fwd)", med(data, "conn_p50_us", "atun"), "<=", 200, " us"),
        ("connect->first byte p99 (atun fwd)", med(data, "conn_p99_us", "atun"), "<=", 1000, " us"),
        ("connect->first byte p50 (atun socks5)", med(data, "conn_p50_us", "atun_socks5"), "<=", 200, " us"),
        ("connect->first byte p99 (atun socks5)", med(data, "conn_p99_us", "atun_socks5"), "<=", 1000, " us"),
        ("gateway memory per idle agent", med(data, "mem_agent_kib", "atun"), "<=", 64, " KiB"),
        ("  stretch", med(data, "mem_agent_kib", "atun"), "<=", 48, " KiB"),
        ("gateway memory per idle connection", med(data, "mem_conn_gw_kib", "atun"), "<=", 8, " KiB"),
    ]
    lines = []
    for name, value, op, limit, unit in checks:
        want = f"{op} {limit:g}{unit}"
        if value is None:
            system = "atun_socks5" if "socks5" in name else "atun"
            why = f"{system} not available" if system in na else "no figure"
            lines.append(f"  {name:42s} {'n/a':>10s}  target {want:12s} {why}")
        else:
            lines.append(f"  {name:42s} {value:10.2f}  target {want:12s} {verdict(value, op, limit)}")
    return lines


def context_lines(data):
    """Baselines against each other, so a run without atun still reads."""
    lines = []
    for metric, label in (("tput1_gbps", "1 conn"), ("tput8_gbps", "8 conns")):
        d = med(data, metric, "direct")
        parts = [f"{lbl} {med(data, metric, s) / d:.2f}" for s, lbl in SYSTEMS[1:]
                 if d and med(data, metric, s) is not None]
        if parts:
            lines.append(f"  throughput {label}, share of direct TCP: " + ", ".join(parts))
    s, p = med(data, "pp_p50_us", "socat"), med(data, "pp_p50_us", "direct")
    if s and p:
        lines.append(f"  round trip p50 socat 2-hop / direct: {s / p:.2f}")
    # p99 / p50 of every system shows how much the machine's load spread the
    # tail in this run, next to atun's own.
    parts = [f"{lbl} {div(med(data, 'pp_p99_us', s), med(data, 'pp_p50_us', s)):.1f}"
             for s, lbl in SYSTEMS if med(data, "pp_p50_us", s)]
    if parts:
        lines.append("  round trip p99 / p50: " + ", ".join(parts))
    return lines


def core_lines(data, out):
    lines = []
    for kind in ("ipv4", "ipv6", "domain"):
        t, sc = med(data, f"route_{kind}_ns", "atun-core"), med(data, f"route_{kind}_scan_ns", "atun-core")
        if t is not None:
            lines.append(f"  route lookup, {kind:6s} at 100k routes: {t:8.1f} ns "
                         f"(linear scan {sc:,.0f} ns, {sc / t:,.0f}x)")
    v = med(data, "sim_agent_s_per_s", "atun-core")
    if v is not None:
        lines.append(f"  simulator (steady, 1000 agents): {v:,.0f} simulated agent-seconds per wall-second")
    if not lines:
        lines.append("  (not run)")
    return lines


def chart_data(data, out):
    """One .dat file per panel: system label, then median/min/max per series.
    Returns, per panel, the numbers (from 1) of the series with figures."""
    panels = {
        "tput": ["tput1_gbps", "tput8_gbps"],
        "pp": ["pp_p50_us", "pp_p99_us", "pp_pin_p50_us", "pp_pin_p99_us"],
        "conn": ["conn_p50_us", "conn_p99_us"],
        "mem": ["mem_conn_kib", "mem_conn_gw_kib", "mem_agent_kib"],
    }
    present = {}
    for name, metrics in panels.items():
        with open(os.path.join(out, f"chart-{name}.dat"), "w") as f:
            for s, label in SYSTEMS:
                if not any(data.get((m, s)) for m in metrics):
                    continue
                cols = []
                for m in metrics:
                    v = data.get((m, s))
                    cols += [f"{x:.4g}" for x in stats(v)] if v else ["NaN"] * 3
                f.write(f'"{label}" ' + " ".join(cols) + "\n")
        present[name] = " ".join(str(i + 1) for i, m in enumerate(metrics)
                                 if any(data.get((m, s)) for s, _ in SYSTEMS))
    return present


def draw(out, gp, header, na, present):
    notes = "\\n".join(f"{s}: not available: {r[:110]}" for s, r in na.items())
    title = header.replace('"', "'")
    args = f'dir="{out}"; title="{title}"; notes="{notes.replace(chr(34), chr(39))}"; '
    args += " ".join(f'{k}="{v}";' for k, v in present.items())
    try:
        subprocess.run(["gnuplot", "-e", args, gp], check=True, timeout=60,
                       capture_output=True, text=True)
        return os.path.join(out, "chart.png")
    except FileNotFoundError:
        return None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"gnuplot failed: {getattr(e, 'stderr', '') or e}", file=sys.stderr)
        return None


def main(argv):
    if len(argv) != 3 or not os.path.exists(os.path.join(argv[1], "results.tsv")):
        print(__doc__, file=sys.stderr)
        return 2
    out, gp = argv[1], argv[2]
    data, na = load(out)
    machine = []
    if os.path.exists(os.path.join(out, "machine.txt")):
        machine = open(os.path.join(out, "machine.txt")).read().splitlines()
    rows = table_rows(data)
    text = ["atun benchmark: atun and the baselines in one run, on loopback", *machine, ""]
    text += text_table(rows) if rows else ["(no traffic figures)"]
    text += [""] + [f"{s}: not available: {r}" for s, r in na.items()]
    text += ["", "targets (medians; ratios atun / baseline):"] + target_lines(data, na)
    text += ["", "baselines:"] + context_lines(data)
    text += ["", "core:"] + core_lines(data, out)
    present = chart_data(data, out)
    header = machine[0] if machine else ""
    png = draw(out, gp, "atun vs baselines on loopback, " + header.replace("date: ", ""), na,
               present)
    text += ["", f"chart: {png}" if png else "chart: not drawn (gnuplot missing or failed)"]
    report = "\n".join(text) + "\n"
    sys.stdout.write(report)
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(report)
    md = ["<!-- written by bench/report.py -->", *[f"{line}  " for line in machine], ""]
    md += md_table(rows) + [""] + [f"- {s}: not available: {r}" for s, r in na.items()]
    md += ["", "Targets:", "", "```", *target_lines(data, na), "```", "", "Core:", "", "```",
           *core_lines(data, out), "```"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
