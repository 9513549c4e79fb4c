// Command ratio reads the output of one or more `go test -bench` runs of
// the logical benchmarks (bench_test.go) on stdin and prints the ratios of
// the loop to its baselines: the median over the runs of each run's
// ratio, next to the median rates.
//
// The n-th result of a benchmark belongs to run n, so per-run ratios pair
// results measured close together in time.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// result is one benchmark line: its metrics by unit.
type result map[string]float64

// results holds every run of every benchmark, by name without the
// -GOMAXPROCS suffix.
type results map[string][]result

var procSuffix = regexp.MustCompile(`-\d+$`)

// parse reads benchmark lines such as
// "BenchmarkLoop/mode=serial/every=1-2  20000  9773 ns/op  102327 msgs/s  1603 B/op  52 allocs/op".
func parse(r io.Reader) (results, error) {
	out := results{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := procSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		res := result{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("ratio: %q: bad value %q", f[0], f[i])
			}
			res[f[i+1]] = v
		}
		out[name] = append(out[name], res)
	}
	return out, sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// metric returns the values of unit over the runs of name.
func (rs results) metric(name, unit string) []float64 {
	var v []float64
	for _, r := range rs[name] {
		if x, ok := r[unit]; ok {
			v = append(v, x)
		}
	}
	return v
}

// comparison is one row of the table.
type comparison struct {
	what     string
	loop     string // benchmark name
	base     string // benchmark name
	unit     string
	goal     string
	original string
}

var comparisons = []comparison{
	{"serial, point every message", "Loop/every=1/serial", "Loop/every=1/baseline", "msgs/s", ">= 0.60", "0.34-0.38"},
	{"serial, point every 100", "Loop/every=100/serial", "Loop/every=100/baseline", "msgs/s", ">= 0.85", "0.44-0.46"},
	{"immediate, point every message", "Loop/every=1/immediate", "Loop/every=1/baseline", "msgs/s", ">= 0.40", "0.045"},
	{"immediate, point every 100", "Loop/every=100/immediate", "Loop/every=100/baseline", "msgs/s", "", ""},
	{"grouped, free commits vs bare grouping", "Group/commit=0s/grouped", "Group/commit=0s/baseline", "msgs/s", "", ""},
	{"grouped, 1ms commits vs bare grouping", "Group/commit=1ms/grouped", "Group/commit=1ms/baseline", "msgs/s", "", ""},
	{"fan, 1ms target vs ideal parallel", "FanSlow/loop", "FanSlow/ideal", "msgs/s", ">= 0.90", "0.50"},
	{"FileMemo.Put vs MemoryMemo.Put", "MemoPut/memo=file", "MemoPut/memo=memory", "puts/s", "", ""},
}

func fmtRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go test -bench ... | ratio")
		flag.PrintDefaults()
	}
	flag.Parse()
	rs, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if len(rs) == 0 {
		fmt.Fprintln(os.Stderr, "ratio: no benchmark results on stdin")
		os.Exit(1)
	}
	w := os.Stdout
	fmt.Fprintf(w, "| %-34s | %10s | %10s | %-7s | %-16s | %-7s | %-9s | %-9s | %-11s |\n",
		"case", "loop", "baseline", "ratio", "per run", "goal", "original", "cpu ratio", "allocs/msg")
	fmt.Fprintf(w, "|%s|%s:|%s:|%s|%s|%s|%s|%s|%s|\n",
		strings.Repeat("-", 36), strings.Repeat("-", 11), strings.Repeat("-", 11), strings.Repeat("-", 9),
		strings.Repeat("-", 18), strings.Repeat("-", 9), strings.Repeat("-", 11), strings.Repeat("-", 11), strings.Repeat("-", 13))
	for _, c := range comparisons {
		loop, base := rs.metric(c.loop, c.unit), rs.metric(c.base, c.unit)
		if len(loop) == 0 || len(base) == 0 {
			continue
		}
		var per []string
		var ratios []float64
		for i := range min(len(loop), len(base)) {
			ratios = append(ratios, loop[i]/base[i])
			per = append(per, fmt.Sprintf("%.2f", loop[i]/base[i]))
		}
		// The median of the paired ratios: a run's loop and baseline ran
		// close together, so load on a shared machine cancels out better
		// than in the ratio of the medians.
		ratio := median(ratios)
		prec := "%.3f"
		if ratio < 0.01 {
			prec = "%.5f"
		}
		allocs := ""
		if la, ba := rs.metric(c.loop, "allocs/op"), rs.metric(c.base, "allocs/op"); len(la) > 0 && len(ba) > 0 {
			allocs = fmt.Sprintf("%.0f vs %.0f", median(la), median(ba))
		}
		if c.unit == "puts/s" {
			per = nil
		}
		cpu := ""
		// Against a sleeping target the CPU time says nothing about speed.
		if lc, bc := rs.metric(c.loop, "cpu-ns/msg"), rs.metric(c.base, "cpu-ns/msg"); !strings.HasPrefix(c.loop, "FanSlow") && len(lc) > 0 && len(bc) > 0 && median(lc) > 0 {
			cpu = fmt.Sprintf("%.3f", median(bc)/median(lc))
		}
		fmt.Fprintf(w, "| %-34s | %10s | %10s | %-7s | %-16s | %-7s | %-9s | %-9s | %-11s |\n",
			c.what, fmtRate(median(loop))+"/s", fmtRate(median(base))+"/s", fmt.Sprintf(prec, ratio),
			strings.Join(per, " "), c.goal, c.original, cpu, allocs)
	}
	fmt.Fprintln(w, "\nratio: median over the runs of loop/baseline rates measured in the same run; loop, baseline: median rates;")
	fmt.Fprintln(w, "cpu ratio: baseline CPU time per message / loop CPU time per message (medians), steadier under load")
	for _, gc := range []string{"default", "memlimit"} {
		name := "Memory/gc=" + gc
		heap := rs.metric(name, "peak-heap-MiB")
		if len(heap) == 0 {
			continue
		}
		limit := median(rs.metric(name, "limit-MiB"))
		fmt.Fprintf(w, "\nmemory, immediate mode, target ~100x slower than the source, BytesInFlight %.0f MiB, gc=%s:\n", limit, gc)
		if r := rs.metric(name, "peak-live-MiB"); len(r) > 0 {
			fmt.Fprintf(w, "  peak live heap above the start: %5.1f MiB (median; runs: %s)\n", median(r), join(r))
		}
		fmt.Fprintf(w, "  peak HeapInuse above the start: %5.1f MiB (median; runs: %s)\n", median(heap), join(heap))
		if r := rs.metric(name, "peak-rss-MiB"); len(r) > 0 {
			fmt.Fprintf(w, "  peak VmRSS above the start:     %5.1f MiB (median; runs: %s)\n", median(r), join(r))
		}
		if r := rs.metric(name, "msgs/s"); len(r) > 0 {
			fmt.Fprintf(w, "  throughput while bounded:       %s msgs/s\n", fmtRate(median(r)))
		}
	}
}

func join(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.1f", x))
	}
	return strings.Join(s, " ")
}
