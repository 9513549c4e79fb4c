package logical_test

// Benchmarks of the loop against a bare two-goroutine pipeline doing the
// same per-message work. bench/run runs them and prints the ratios.
//
// Every benchmark treats b.N as a number of messages and reports msgs/s,
// so runs with fixed -benchtime counts (e.g. 20000x) compare directly.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/sirupsen/logrus"
)

// benchTables is the number of tables each generator message writes.
const benchTables = 4

// nopTarget accepts everything and does nothing. An Apply may take a fixed
// time (delay) and a per-mutation time (perMut), slept.
type nopTarget struct {
	delay  time.Duration
	perMut time.Duration
}

var _ logical.Target = (*nopTarget)(nil)

func (t *nopTarget) Apply(_ context.Context, _ logical.Table, muts []logical.Mutation) error {
	if d := t.delay + time.Duration(len(muts))*t.perMut; d > 0 {
		time.Sleep(d)
	}
	return nil
}

func (t *nopTarget) Begin(context.Context) (logical.TargetTx, error) { return nopTx{}, nil }

type nopTx struct{}

func (nopTx) Apply(context.Context, logical.Table, []logical.Mutation) error { return nil }
func (nopTx) Commit(context.Context) error                                   { return nil }
func (nopTx) Rollback(context.Context) error                                 { return nil }

// benchLogger discards everything, without formatting it.
func benchLogger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.WarnLevel)
	return l
}

// meter measures a benchmark's elapsed time and the process's CPU time.
type meter struct {
	start time.Time
	cpu   time.Duration
}

func startMeter() meter { return meter{start: time.Now(), cpu: cpuTime()} }

// report reports msgs/s over the elapsed time and, where the CPU time is
// known, the CPU time per message (user and system, all goroutines): on a
// shared machine the CPU cost is steadier than the rate.
func (m meter) report(b *testing.B) {
	b.ReportMetric(float64(b.N)/time.Since(m.start).Seconds(), "msgs/s")
	if m.cpu > 0 {
		b.ReportMetric(float64(cpuTime()-m.cpu)/float64(b.N), "cpu-ns/msg")
	}
}

// cpuTime returns the user plus system time of the process from
// /proc/self/stat (in clock ticks of 10ms), or 0 where that does not exist.
func cpuTime() time.Duration {
	buf, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces; fields count
	// from after it: state is field 3, utime 14 and stime 15.
	_, rest, ok := strings.Cut(string(buf), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// runGenerator runs b.N generator messages through a loop end to end:
// Start, wait for the point to reach N-1, stop, wait for the exit.
func runGenerator(b *testing.B, cfg *logical.Config, perCommit int) {
	b.Helper()
	gen := logicaltest.NewGenerator(b.N)
	gen.PerCommit = perCommit
	cfg.Logger = benchLogger()
	if cfg.Memo == nil {
		cfg.Memo = logical.NewMemoryMemo()
	}
	b.ReportAllocs()
	runtime.GC()
	b.ResetTimer()
	m := startMeter()
	l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{
		Dialect: gen, LoopName: "bench", TargetSchema: "s",
	})
	if err != nil {
		b.Fatal(err)
	}
	waitPoint(b, l, b.N-1)
	l.Stop(time.Second)
	<-l.Stopped()
	m.report(b)
	b.StopTimer()
	if got := gen.Seen(); got != b.N {
		b.Fatalf("generator saw %d distinct messages, want %d", got, b.N)
	}
}

// waitPoint waits on the loop's GetConsistentPoint channel until the point
// reaches seq. Far from seq it pauses a millisecond after each wake-up, so
// that the waiting goroutine does not take a wake-up per message from the
// two it measures (the baseline has no third goroutine); the last
// messages are awaited change by change.
func waitPoint(b *testing.B, l *logical.Loop, seq int) {
	b.Helper()
	for {
		cp, changed := l.GetConsistentPoint()
		at := cp.(*logicaltest.Stamp).Seq
		if at >= seq {
			return
		}
		select {
		case <-changed:
		case <-l.Stopped():
			b.Fatal("loop stopped before the last message")
		}
		if seq-at > 1000 {
			time.Sleep(time.Millisecond) // throttles wake-ups; not a wait for the condition
		}
	}
}

// BenchmarkLoop runs the generator workload through the loop: one
// transaction per message, one mutation into each of 4 tables, the point
// set after every message or every 100, a MemoryMemo and a no-op target,
// in serial and in immediate mode. Next to them, the baseline does the
// same per-message work without the library: a producer makes the
// messages and sends them over a buffered channel (the loop's capacity)
// to a consumer, which builds the 4 mutations the way the generator does,
// applies them to the no-op target, and every `every` messages encodes
// the stamp as JSON and stores it in a map under a mutex (what MemoryMemo
// does). The baseline runs right before the loop runs it is compared
// with, so that on a shared machine the pairs see similar load.
func BenchmarkLoop(b *testing.B) {
	for _, every := range []int{1, 100} {
		b.Run(fmt.Sprintf("every=%d/baseline", every), func(b *testing.B) {
			runBaseline(b, &nopTarget{}, every, false)
		})
		for _, mode := range []string{"serial", "immediate"} {
			b.Run(fmt.Sprintf("every=%d/%s", every, mode), func(b *testing.B) {
				runGenerator(b, &logical.Config{Target: &nopTarget{}, Immediate: mode == "immediate"}, every)
			})
		}
	}
}

// runBaseline is the bare pipeline. With parallel, the 4 applies of a
// message run on 4 long-lived goroutines at once and the consumer waits
// for all of them: the ideal for a slow target.
func runBaseline(b *testing.B, target *nopTarget, every int, parallel bool) {
	b.ReportAllocs()
	tables := logicaltest.Tables("s", benchTables)
	ctx := context.Background()
	var (
		memoMu sync.Mutex
		memo   = make(map[string][]byte)
	)
	type job struct {
		table logical.Table
		muts  []logical.Mutation
	}
	var jobs []chan job
	var applied sync.WaitGroup
	if parallel {
		for range tables {
			ch := make(chan job)
			jobs = append(jobs, ch)
			go func() {
				for j := range ch {
					_ = target.Apply(ctx, j.table, j.muts)
					applied.Done()
				}
			}()
		}
		defer func() {
			for _, ch := range jobs {
				close(ch)
			}
		}()
	}
	runtime.GC()
	b.ResetTimer()
	meter := startMeter()
	ch := make(chan logical.Message, 32)
	go func() {
		for i := range b.N {
			ch <- logicaltest.Message{Seq: i, Time: time.Now()}
		}
		close(ch)
	}()
	n := 0
	for msg := range ch {
		m := msg.(logicaltest.Message)
		if parallel {
			applied.Add(len(tables))
		}
		for i, t := range tables {
			mut := logical.Mutation{
				Key:  json.RawMessage(strconv.Itoa(m.Seq)),
				Data: json.RawMessage(fmt.Sprintf(`{"k":%d,"table":%q}`, m.Seq, t.Name)),
				Time: m.Time,
			}
			mut.Key = append(append([]byte{'['}, mut.Key...), ']')
			muts := []logical.Mutation{mut}
			if parallel {
				jobs[i] <- job{table: t, muts: muts}
			} else if err := target.Apply(ctx, t, muts); err != nil {
				b.Fatal(err)
			}
		}
		if parallel {
			applied.Wait()
		}
		n++
		if n%every == 0 || m.Seq == b.N-1 {
			buf, err := json.Marshal(&logicaltest.Stamp{Seq: m.Seq, Time: m.Time})
			if err != nil {
				b.Fatal(err)
			}
			memoMu.Lock()
			memo["bench"] = buf
			memoMu.Unlock()
		}
	}
	meter.report(b)
}

// BenchmarkFanSlow runs the generator in immediate mode against a target
// whose Apply takes 1ms, against the ideal: the 4 applies of each message
// in parallel, 1ms per message.
func BenchmarkFanSlow(b *testing.B) {
	const delay = time.Millisecond
	b.Run("loop", func(b *testing.B) {
		runGenerator(b, &logical.Config{Target: &nopTarget{delay: delay}, Immediate: true}, 1)
	})
	b.Run("ideal", func(b *testing.B) {
		runBaseline(b, &nopTarget{delay: delay}, 1, true)
	})
}

// BenchmarkMemoPut compares a crash-safe FileMemo.Put (write, fsync,
// rename, fsync of the directory) with MemoryMemo.Put.
func BenchmarkMemoPut(b *testing.B) {
	value, err := json.Marshal(&logicaltest.Stamp{Seq: 123456, Time: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, memo logical.Memo) {
		b.ReportAllocs()
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			if err := memo.Put(ctx, "bench", value); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
	}
	b.Run("memo=memory", func(b *testing.B) { run(b, logical.NewMemoryMemo()) })
	b.Run("memo=file", func(b *testing.B) {
		memo, err := logical.NewFileMemo(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		run(b, memo)
	})
}

// BenchmarkMemory measures memory while a fast source feeds a slow target
// in immediate mode with BytesInFlight = 4 MiB. The generator puts all
// messages in one batch (the backfill pattern), so only BytesInFlight
// holds the queue back. The target applies at most 16 (FanShards) chunks
// at once and sleeps 400µs per mutation, about 40k mutations/s, 10k
// messages/s: the generator alone makes well over 100 times that. A
// sampler records the peak live heap (as of the last GC), HeapInuse
// (live data plus garbage not yet collected; with GOGC=100 up to about
// twice the live heap) and VmRSS; all are reported above what they were
// before the loop started, next to BytesInFlight.
//
// gc=default runs with the process's GC settings. gc=memlimit also sets a
// soft memory limit (debug.SetMemoryLimit) of the Go runtime's memory at
// the start plus twice BytesInFlight, which is how a deployment keeps the
// garbage collector's headroom from doubling the queue's footprint.
func BenchmarkMemory(b *testing.B) {
	b.Run("gc=default", func(b *testing.B) { runMemory(b, false) })
	b.Run("gc=memlimit", func(b *testing.B) { runMemory(b, true) })
}

func runMemory(b *testing.B, memLimit bool) {
	const limit = 4 << 20
	// Start from a collected heap returned to the OS, so that earlier
	// benchmarks do not hide this one's growth.
	debug.FreeOSMemory()
	if memLimit {
		// The memory limit counts what the runtime has mapped minus what
		// it returned to the OS.
		mem := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(mem)
		used := int64(mem[0].Value.Uint64() - mem[1].Value.Uint64())
		old := debug.SetMemoryLimit(used + 2*limit)
		defer debug.SetMemoryLimit(old)
	}
	gen := logicaltest.NewGenerator(b.N)
	gen.PerCommit = b.N
	cfg := &logical.Config{
		Target:        &nopTarget{perMut: 400 * time.Microsecond},
		Immediate:     true,
		BytesInFlight: limit,
		Logger:        benchLogger(),
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	heap0, rss0, live0 := ms.HeapInuse, rss(), live[0].Value.Uint64()
	var peakHeap, peakRSS, peakLive uint64
	sample := func() {
		runtime.ReadMemStats(&ms)
		metrics.Read(live)
		peakHeap = max(peakHeap, ms.HeapInuse)
		peakRSS = max(peakRSS, rss())
		peakLive = max(peakLive, live[0].Value.Uint64())
	}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				sample()
			case <-stop:
				sample()
				return
			}
		}
	}()
	b.ResetTimer()
	m := startMeter()
	l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{
		Dialect: gen, LoopName: "bench", TargetSchema: "s",
	})
	if err != nil {
		b.Fatal(err)
	}
	waitPoint(b, l, b.N-1)
	l.Stop(time.Second)
	<-l.Stopped()
	m.report(b)
	close(stop)
	<-sampled
	const mib = 1 << 20
	b.ReportMetric(float64(limit)/mib, "limit-MiB")
	b.ReportMetric(float64(peakLive-min(live0, peakLive))/mib, "peak-live-MiB")
	b.ReportMetric(float64(peakHeap-min(heap0, peakHeap))/mib, "peak-heap-MiB")
	if peakRSS > 0 {
		b.ReportMetric(float64(peakRSS-min(rss0, peakRSS))/mib, "peak-rss-MiB")
	}
}

// rss returns the resident set size from /proc/self/status, or 0 where
// that does not exist.
func rss() uint64 {
	buf, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(buf)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
