// Command pgreplicate replicates the tables of a PostgreSQL publication into
// another PostgreSQL database through a logical replication slot (pgoutput).
//
//	pgreplicate --sourceConn postgres://.../src --targetConn postgres://.../dst \
//	    --publicationName pub --slotName slot --createSlot
//
// The target tables must exist with the same names and compatible columns,
// in the schema of the same name as the source's (or as --schemaMap or
// --targetSchema say), unless --snapshot --createTables creates them;
// --snapshot also copies the rows the tables already have (snapshot.go).
// The consistent point, the target's progress and the
// optional lease live in --stagingSchema of the target database. SIGINT or
// SIGTERM stops gracefully; the next start resumes where it stopped.
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
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/metrics"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/logical-go/logical/postgres/pgstore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

func main() {
	// Replication allocates many short-lived values per row; the heap
	// stays small (bounded batches), so collect less often than the
	// default unless GOGC says otherwise.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	oneProc = os.Getenv("GOMAXPROCS") == ""
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	status := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(status)
}

// defaultGCPercent is the GOGC pgreplicate uses when the environment sets
// none.
const defaultGCPercent = 400

// oneProc is set when the environment sets no GOMAXPROCS: serial mode then
// runs on one P. Its work is a pipeline of goroutines handing over one
// message at a time (the source, Process, the reader of a commit's
// results); with more Ps every hand-over wakes an idle P's thread, which
// cost more CPU than the parallelism gave (bench/pg on 2 CPUs: CPU per row
// of the backlog catch-up 14.8 against 21.7 µs, of the 2M-row load 9.4
// against 11.8 µs, and no slower). Fan mode (--immediate) too: its shards
// overlap on the network, where a goroutine waiting for its statement
// gives up the P, and on 2 CPUs more Ps mostly spun in the scheduler.
var oneProc bool

// startCPUProfile writes a CPU profile to path until the returned function
// is called, which also writes the allocation profile (pprof "allocs":
// everything allocated since the start, sampled) to path + ".allocs".
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
		if a, err := os.Create(path + ".allocs"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(a, 0)
			_ = a.Close()
		}
	}, nil
}

// options are the command-line flags.
type options struct {
	sourceConn, targetConn      string
	publication, slot           string
	createSlot                  bool
	targetSchema, stagingSchema string
	loopName                    string
	immediate, foreignKeys      bool
	fanShards                   int
	retryDelay, standbyTimeout  time.Duration
	sourceTimeout               time.Duration
	applyTimeout, lease         time.Duration
	metricsAddr, logLevel       string
	cpuProfile                  string
	schemaMap                   string
	chaosProb                   float64
	snap                        snapshotOptions // snapshot.go
}

// usageError is a problem with the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parse reads the flags.
func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("pgreplicate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.sourceConn, "sourceConn", "", "source database URL or key=value string (required)")
	fs.StringVar(&o.targetConn, "targetConn", "", "target database URL or key=value string (required)")
	fs.StringVar(&o.publication, "publicationName", "", "publication(s) to replicate, comma-separated (required)")
	fs.StringVar(&o.slot, "slotName", "", "logical replication slot (required)")
	fs.BoolVar(&o.createSlot, "createSlot", false, "create the slot if it does not exist")
	fs.StringVar(&o.targetSchema, "targetSchema", "", "schema of all target tables (default: each table's source schema)")
	fs.StringVar(&o.schemaMap, "schemaMap", "", "target schemas of source schemas: src=dst,... (others: --targetSchema, or the same name)")
	fs.StringVar(&o.stagingSchema, "stagingSchema", pgstore.DefaultStagingSchema, "target schema for the memo, progress and lease tables")
	fs.StringVar(&o.loopName, "loopName", "", "name of the loop, the key of its consistent point (default: the slot name)")
	fs.BoolVar(&o.immediate, "immediate", false, "apply without target transactions, in parallel (at-least-once)")
	fs.BoolVar(&o.foreignKeys, "foreignKeys", false, "apply parents before children using the target's foreign keys")
	fs.IntVar(&o.fanShards, "fanShards", defaultFanShards(), "parallel appliers in immediate mode; the default is the number of CPUs, within [2, 16]")
	fs.DurationVar(&o.retryDelay, "retryDelay", logical.DefaultRetryDelay, "pause before retrying after an error")
	fs.DurationVar(&o.standbyTimeout, "standbyTimeout", logical.DefaultStandbyTimeout, "how often to persist the point and acknowledge the source")
	fs.DurationVar(&o.sourceTimeout, "sourceTimeout", pglogical.DefaultSourceTimeout, "reconnect when the source sent nothing, not even a keepalive, for this long (0: never)")
	fs.DurationVar(&o.applyTimeout, "applyTimeout", logical.DefaultApplyTimeout, "grace period for a graceful stop")
	fs.DurationVar(&o.lease, "lease", 0, "hold a lease of this lifetime so that one process of several replicates (0: no lease)")
	fs.StringVar(&o.metricsAddr, "metricsAddr", "", "serve Prometheus metrics on this address, e.g. :9090")
	fs.StringVar(&o.logLevel, "logLevel", "info", "trace, debug, info, warn or error")
	fs.Float64Var(&o.chaosProb, "chaosProb", 0, "for tests: probability that each call of the dialect, its events and batches fails with an injected error (logical.Config.ChaosProb; 0: off)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile (pprof) to this file until pgreplicate exits, and its allocation profile to this file with .allocs appended at exit")
	snapshotFlags(fs, &o.snap)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: pgreplicate --sourceConn URL --targetConn URL --publicationName NAME --slotName NAME [flags]")
			fs.PrintDefaults()
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	switch {
	case fs.NArg() > 0:
		return nil, usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case o.sourceConn == "":
		return nil, usageError{"--sourceConn is required"}
	case o.targetConn == "":
		return nil, usageError{"--targetConn is required"}
	case o.publication == "":
		return nil, usageError{"--publicationName is required"}
	case o.slot == "":
		return nil, usageError{"--slotName is required"}
	case o.stagingSchema == "":
		return nil, usageError{"--stagingSchema must not be empty"}
	case o.immediate && o.foreignKeys:
		return nil, usageError{"--immediate and --foreignKeys cannot be combined"}
	case o.fanShards < 1:
		return nil, usageError{fmt.Sprintf("--fanShards must be at least 1, got %d", o.fanShards)}
	case o.retryDelay < 0 || o.standbyTimeout < 0 || o.applyTimeout < 0 || o.sourceTimeout < 0:
		return nil, usageError{"durations must not be negative"}
	case o.sourceTimeout != 0 && o.sourceTimeout < 100*time.Millisecond:
		return nil, usageError{fmt.Sprintf("--sourceTimeout must be 0 (off) or at least 100ms, got %s", o.sourceTimeout)}
	case o.lease != 0 && o.lease < time.Second:
		return nil, usageError{fmt.Sprintf("--lease must be 0 or at least 1s, got %s", o.lease)}
	}
	if err := o.snap.check(); err != nil {
		return nil, err
	}
	if _, err := pgconn.ParseConfig(o.sourceConn); err != nil {
		return nil, usageError{"--sourceConn cannot be parsed"}
	}
	if _, err := pgconn.ParseConfig(o.targetConn); err != nil {
		return nil, usageError{"--targetConn cannot be parsed"}
	}
	if _, err := parseSchemaMap(o.schemaMap); err != nil {
		return nil, usageError{err.Error()}
	}
	if _, err := logrus.ParseLevel(o.logLevel); err != nil {
		return nil, usageError{fmt.Sprintf("--logLevel: unknown level %q", o.logLevel)}
	}
	if o.loopName == "" {
		o.loopName = o.slot
	}
	return o, nil
}

// run is the command; cancelling ctx stops it gracefully. It returns the
// exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgreplicate: %v\n", err)
		return 2
	}
	log := logrus.New()
	log.SetOutput(stderr)
	level, _ := logrus.ParseLevel(o.logLevel)
	log.SetLevel(level)
	if oneProc {
		runtime.GOMAXPROCS(1)
	}
	if o.cpuProfile != "" {
		stopProfile, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "pgreplicate: %v\n", err)
			return 1
		}
		defer stopProfile()
	}
	if err := replicate(ctx, o, log); err != nil {
		fmt.Fprintf(stderr, "pgreplicate: %s\n", oneLine(err))
		return 1
	}
	return 0
}

// oneLine renders err on a single line (driver errors may list every
// address they tried on lines of their own).
func oneLine(err error) string {
	lines := strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; "))
	return strings.ReplaceAll(strings.Join(lines, " "), ": ;", ";")
}

// defaultFanShards is the default of --fanShards: the number of CPUs,
// within [2, logical.DefaultFanShards]. Each shard is a target connection
// that applies one auto-committed statement at a time; more of them than
// the machine has cores mostly contend (bench/PG.md: on 2 cores, 2 shards
// caught a backlog up in 1.25 s, 4 in 1.45 s, 16 in 2.05 s).
func defaultFanShards() int {
	return min(max(runtime.NumCPU(), 2), logical.DefaultFanShards)
}

// replicate sets everything up, runs the loop until ctx is cancelled and
// stops it gracefully.
//
// Setting up overlaps what does not depend on each other: the replication
// connection is opened, and the source checked, while the target is
// reached. Errors are reported in the order of the steps (the target's
// first), and nothing is written anywhere until every check passed.
func replicate(ctx context.Context, o *options, log *logrus.Logger) error {
	began := time.Now()
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	poolCfg, err := pgxpool.ParseConfig(o.targetConn)
	if err != nil {
		return errors.New("--targetConn cannot be parsed")
	}
	poolCfg.MaxConns = int32(o.fanShards + 4)
	pool, err := pgxpool.NewWithConfig(context.Background(), poolCfg)
	if err != nil {
		return fmt.Errorf("target database: %w", err)
	}
	defer pool.Close()
	// With a lease the first ReadInto may be far off, and the connection
	// would hold a walsender meanwhile.
	var pre *pglogical.Preconnection
	if o.lease == 0 {
		pre = pglogical.Preconnect(o.sourceConn)
		defer pre.Close()
	}
	target := pgstore.NewTarget(pool)
	schemaMap, _ := parseSchemaMap(o.schemaMap)
	var loopSchema string
	var tables []logical.Table
	checked := make(chan error, 1)
	go func() {
		var err error
		loopSchema, tables, err = checkSource(setupCtx, o, pool, schemaMap, target)
		checked <- err
	}()
	if err := pool.Ping(setupCtx); err != nil {
		cancel()
		<-checked
		if isLoginRefused(err) {
			return fmt.Errorf("the target database refused the login (check the user and password of --targetConn): %w", err)
		}
		return fmt.Errorf("cannot reach the target database: %w", err)
	}
	if err := <-checked; err != nil {
		return err
	}
	log.WithField("elapsed", time.Since(began)).Debug("checked the source and the target")
	if o.createSlot {
		created, err := pglogical.CreateSlot(setupCtx, o.sourceConn, o.slot)
		if err != nil {
			return err
		}
		if created {
			log.WithField("slot", o.slot).Info("created replication slot")
		}
	}

	memo, err := pgstore.NewMemo(setupCtx, pool, o.stagingSchema)
	if err != nil {
		return err
	}
	dcfg := pglogical.Config{
		SourceConn:     o.sourceConn,
		Slot:           o.slot,
		Publications:   strings.Split(o.publication, ","),
		StandbyTimeout: o.standbyTimeout,
		SourceTimeout:  o.sourceTimeout,
		SchemaMap:      schemaMap,
	}
	if o.sourceTimeout == 0 {
		dcfg.SourceTimeout = -1 // the flag's 0 turns the check off
	}
	if dcfg.Snapshot, err = snapshotConfig(setupCtx, o, pool, log); err != nil {
		return err
	}
	// The target's own record of progress is only in step with the data
	// when each source transaction is one target transaction and no
	// ordering decorator rejects the staging table.
	if !o.immediate && !o.foreignKeys {
		if dcfg.Progress, err = pgstore.NewProgress(setupCtx, pool, o.stagingSchema); err != nil {
			return err
		}
	}
	dcfg.Preconnection = pre
	// The first writes need the columns of the target tables (and of the
	// progress table); read them while the loop starts. Not with
	// --snapshot: it creates tables and puts off their primary keys
	// before the first writes to them, and the cache would keep what the
	// catalog said before.
	if dcfg.Progress != nil {
		tables = append(tables, dcfg.Progress.Table())
	}
	if o.snap.enabled {
		tables = nil
	}
	// Not under ctx: a write waiting for the preload gets its error, and
	// a signal's graceful stop lets writes finish; the preload is stopped
	// once the loop has.
	preloadCtx, stopPreload := context.WithCancel(context.Background())
	preloaded := make(chan struct{})
	go func() {
		defer close(preloaded)
		target.Preload(preloadCtx, tables)
	}()
	defer func() {
		stopPreload()
		<-preloaded
	}()
	log.WithField("elapsed", time.Since(began)).Debug("set up the staging tables")
	d, err := pglogical.New(dcfg)
	if err != nil {
		return err
	}
	var dialect logical.Dialect = d
	if o.lease > 0 {
		leases, err := pgstore.NewLeases(setupCtx, pool, o.stagingSchema, o.lease, "")
		if err != nil {
			return err
		}
		dialect = &leased{Dialect: d, leases: leases, name: "pgreplicate/" + o.loopName}
	}

	var observer logical.Observer
	if o.metricsAddr != "" {
		obs := metrics.New()
		stopMetrics, err := serveMetrics(o.metricsAddr, obs, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
		observer = obs
	}

	factory, err := logical.NewFactory(context.Background(), &logical.Config{
		ApplyTimeout:   o.applyTimeout,
		FanShards:      o.fanShards,
		ForeignKeys:    o.foreignKeys,
		Immediate:      o.immediate,
		RetryDelay:     o.retryDelay,
		StandbyTimeout: o.standbyTimeout,
		ChaosProb:      float32(o.chaosProb),
		Memo:           memo,
		Target:         target,
		Logger:         log,
		Observer:       observer,
	})
	if err != nil {
		return err
	}
	loop, err := factory.Start(&logical.LoopConfig{
		Dialect:      dialect,
		LoopName:     o.loopName,
		TargetSchema: loopSchema,
	})
	if err != nil {
		factory.Stop(0)
		_ = factory.Wait()
		return err
	}
	log.WithFields(logrus.Fields{"loop": o.loopName, "slot": o.slot, "point": fmt.Sprint(loop.GetInitialPoint()),
		"setup": time.Since(began).Round(time.Millisecond)}).Info("replicating")

	select {
	case <-ctx.Done():
		log.WithField("loop", o.loopName).Info("stopping")
	case <-loop.Stopped():
	}
	factory.Stop(o.applyTimeout)
	return factory.Wait()
}

// leased makes the dialect hold a lease, so that of several processes
// with the same loop name only one replicates.
type leased struct {
	*pglogical.Dialect
	leases *pgstore.Leases
	name   string
}

var (
	_ logical.Dialect = (*leased)(nil)
	_ logical.Lessor  = (*leased)(nil)
)

// Acquire implements logical.Lessor.
func (l *leased) Acquire(ctx context.Context) (logical.Lease, error) {
	return l.leases.Acquire(ctx, l.name)
}

// serveMetrics serves the loop's metrics, with the Go runtime's and the
// process's, at /metrics on addr. The returned function stops the server.
func serveMetrics(addr string, obs *metrics.Observer, log logrus.FieldLogger) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(obs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metricsAddr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Warn("metrics server failed")
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
