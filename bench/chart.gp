# The chart of bench/run.sh, drawn by report.py:
#   gnuplot -e 'dir="bench/out"; title="..."; notes="..."; tput="1 2"; pp="..."; conn="..."; mem="..."' bench/chart.gp
# Reads dir/chart-{tput,pp,conn,mem}.dat, whose rows are a system label and
# then median, min, max for each series; tput, pp, conn and mem list the
# series that have figures (gnuplot refuses a histogram series without a
# single point).  Writes dir/chart.png.  Bars are medians, whiskers min-max
# over the runs.
if (!exists("dir")) dir = "bench/out"
if (!exists("title")) title = "atun vs baselines"
if (!exists("notes")) notes = ""
if (!exists("tput")) tput = "1 2"
if (!exists("pp")) pp = "1 2 3 4"
if (!exists("conn")) conn = "1 2"
if (!exists("mem")) mem = "1 2 3"

set terminal pngcairo size 1500,1050 font "DejaVu Sans,10" noenhanced
set output dir."/chart.png"
set multiplot layout 2,2 title title font ",13" margins 0.06,0.98,0.12,0.9 spacing 0.08,0.14
if (strlen(notes) > 0) set label 1 notes at screen 0.5, screen 0.05 center font ",10" textcolor rgb "#b00000"

set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics lc rgb "#dddddd"
set key top right
set xtics nomirror

# panel(FILE, SERIES, TITLES, COLOURS): series i is in columns 3i-1..3i+1.
# k runs over the words of S; n(k) is the k-th listed series.
n(k) = int(word(S, k))
med(k) = column(3 * n(k) - 1)
lo(k) = column(3 * n(k))
hi(k) = column(3 * n(k) + 1)
panel = 'if (strlen(S) == 0) { set label 2 "no figures" at graph 0.5, graph 0.5 center; plot [0:1] NaN notitle; unset label 2 } else { plot for [k = 1:words(S)] dir.F using (med(k)):(lo(k)):(hi(k)):xtic(1) title word(T, n(k)) lc rgb word(C, n(k)) }'

set title "Throughput through the tunnel (iperf3, Gbit/s, higher is better)"
set ylabel "Gbit/s"
set yrange [0:*]
F = "/chart-tput.dat"; S = tput; T = '"1 connection" "8 connections"'; C = "#4472c4 #ed7d31"
@panel

set logscale y
set yrange [1:*]
set title "64-byte round trip (us, log scale, lower is better)"
set ylabel "microseconds"
F = "/chart-pp.dat"; S = pp
T = '"p50" "p99" "p50, all on CPU 0" "p99, all on CPU 0"'; C = "#4472c4 #a5c8ff #70ad47 #c5e0b4"
@panel

set title "Connect -> first byte (us, log scale, lower is better)"
F = "/chart-conn.dat"; S = conn; T = '"p50" "p99"'; C = "#4472c4 #a5c8ff"
@panel

unset logscale y
set yrange [0:*]
# Head room above the bars for the long key.
set offsets 0, 0, graph 0.45, 0
set key top left
set title "Memory (KiB, lower is better)"
set ylabel "KiB"
F = "/chart-mem.dat"; S = mem
T = '"per idle connection: Pss of all tunnel processes" "per idle connection: gateway private" "per idle agent: gateway private"'
C = "#7f6084 #c9a0dc #ffc000"
@panel

unset multiplot
