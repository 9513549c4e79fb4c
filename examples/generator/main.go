// Command generator is a runnable demo of the loop: it replicates a
// synthetic source (logicaltest.Generator: N numbered messages, one
// transaction each, one row per message in each of 4 tables) into an
// in-memory target, persisting the consistent point in a directory.
//
//	go run ./examples/generator --n 100000
//
// It prints progress about once a second, stops cleanly on Ctrl-C
// (SIGINT/SIGTERM) and exits once all N messages are applied. Run it again
// with the same --state directory and it resumes from the saved point: the
// target lives in memory, so the second run applies only the messages
// after that point. With --metricsAddr it serves Prometheus metrics at
// /metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/logical-go/logical/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

// loopName is the key of the consistent point in the state directory.
const loopName = "generator"

// options are the command-line flags.
type options struct {
	n           int
	state       string
	metricsAddr string
	perCommit   int
	every       time.Duration
	grace       time.Duration
}

// summary is what a run did.
type summary struct {
	initial, final int // sequence numbers; -1 means none
	applied        int // messages applied by this run
	interrupted    bool
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "generator:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, errOut io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("generator", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.IntVar(&o.n, "n", 100000, "number of messages to replicate")
	fs.StringVar(&o.state, "state", filepath.Join(os.TempDir(), "logical-generator"),
		"directory where the consistent point is kept; a second run with the same directory resumes")
	fs.StringVar(&o.metricsAddr, "metricsAddr", "", "serve Prometheus metrics at /metrics on this address, e.g. :9090")
	fs.IntVar(&o.perCommit, "perCommit", 100, "messages per committed batch (the point is persisted once per batch)")
	fs.DurationVar(&o.every, "progress", time.Second, "how often to print progress")
	fs.DurationVar(&o.grace, "grace", 5*time.Second, "how long a stop may take before work is cancelled")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.n <= 0:
		err := fmt.Errorf("--n must be > 0, got %d", o.n)
		fmt.Fprintln(errOut, err)
		return o, err
	case o.perCommit <= 0:
		err := fmt.Errorf("--perCommit must be > 0, got %d", o.perCommit)
		fmt.Fprintln(errOut, err)
		return o, err
	case o.every <= 0:
		err := fmt.Errorf("--progress must be > 0, got %v", o.every)
		fmt.Fprintln(errOut, err)
		return o, err
	}
	return o, nil
}

// run replicates until all o.n messages are applied or ctx is cancelled
// (which stops the loop gracefully and is no error).
func run(ctx context.Context, o options, out io.Writer) (summary, error) {
	sum := summary{initial: -1, final: -1}
	memo, err := logical.NewFileMemo(o.state)
	if err != nil {
		return sum, err
	}
	logger := logrus.New()
	logger.SetOutput(os.Stderr)
	logger.SetLevel(logrus.WarnLevel)

	obs := metrics.New()
	if o.metricsAddr != "" {
		addr, stopMetrics, err := serveMetrics(o.metricsAddr, obs)
		if err != nil {
			return sum, err
		}
		defer stopMetrics()
		fmt.Fprintf(out, "serving metrics at http://%s/metrics\n", addr)
	}

	gen := logicaltest.NewGenerator(o.n)
	gen.PerCommit = o.perCommit
	target := logical.NewMemoryTarget()
	f, err := logical.NewFactory(context.Background(), &logical.Config{
		Target:     target,
		Memo:       memo,
		Logger:     logger,
		Observer:   obs,
		RetryDelay: time.Second,
	})
	if err != nil {
		return sum, err
	}
	defer func() {
		f.Stop(0)
		_ = f.Wait()
	}()
	l, err := f.Start(&logical.LoopConfig{Dialect: gen, LoopName: loopName, TargetSchema: "demo"})
	if err != nil {
		return sum, err
	}
	defer func() {
		l.Stop(o.grace)
		<-l.Stopped()
	}()

	sum.initial = seq(l.GetInitialPoint())
	sum.final = sum.initial
	switch {
	case sum.initial >= o.n-1:
		fmt.Fprintf(out, "all %d messages were applied by an earlier run (saved point %d in %s); nothing to do "+
			"(raise --n to continue, or remove that file to start over)\n",
			o.n, sum.initial, memo.Path(loopName))
		return sum, nil
	case sum.initial >= 0:
		fmt.Fprintf(out, "resuming from the saved point %d in %s: messages 0..%d were applied by an earlier run; "+
			"the target is in memory, so this run applies only the remaining %d messages\n",
			sum.initial, memo.Path(loopName), sum.initial, o.n-1-sum.initial)
	default:
		fmt.Fprintf(out, "starting from scratch: %d messages into 4 tables, point kept in %s\n", o.n, memo.Path(loopName))
	}

	ticker := time.NewTicker(o.every)
	defer ticker.Stop()
	start := time.Now()
	lastSeq, lastAt := sum.initial, start
	for {
		cp, changed := l.GetConsistentPoint()
		sum.final = seq(cp)
		sum.applied = sum.final - sum.initial
		if sum.final >= o.n-1 {
			elapsed := time.Since(start)
			fmt.Fprintf(out, "done: %d messages applied in %v (%.0f messages/s), consistent point %d\n",
				sum.applied, elapsed.Round(time.Millisecond), float64(sum.applied)/elapsed.Seconds(), sum.final)
			return sum, nil
		}
		select {
		case <-changed:
		case now := <-ticker.C:
			rate := float64(sum.final-lastSeq) / now.Sub(lastAt).Seconds()
			lastSeq, lastAt = sum.final, now
			fmt.Fprintf(out, "consistent point %d of %d, %.0f messages/s, %d rows per table in memory\n",
				sum.final, o.n-1, rate, target.Count(logical.Table{Schema: "demo", Name: "t0"}))
		case <-ctx.Done():
			fmt.Fprintf(out, "stopping at consistent point %d; run again to resume\n", sum.final)
			l.Stop(o.grace)
			<-l.Stopped()
			cp, _ := l.GetConsistentPoint()
			sum.final = seq(cp)
			sum.applied = sum.final - sum.initial
			sum.interrupted = true
			fmt.Fprintf(out, "stopped: %d messages applied, consistent point %d saved\n", sum.applied, sum.final)
			return sum, nil
		case <-l.Stopped():
			return sum, errors.New("the loop stopped unexpectedly")
		}
	}
}

// seq returns the sequence number of a generator stamp.
func seq(s logical.Stamp) int {
	if st, ok := s.(*logicaltest.Stamp); ok {
		return st.Seq
	}
	return -1
}

// serveMetrics serves obs at /metrics on addr until the returned function
// is called, and returns the address it listens on.
func serveMetrics(addr string, obs *metrics.Observer) (string, func(), error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(obs); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--metricsAddr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
