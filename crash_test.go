package logical_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var crashKills = flag.Int("crash.kills", 50, "how many times TestCrash kills its helper process")

// Environment of the helper process of TestCrash.
const (
	crashEnvDir   = "LOGICAL_CRASH_DIR"   // where the memo and the log live; set only in the helper
	crashEnvMode  = "LOGICAL_CRASH_MODE"  // "serial" or "immediate"
	crashEnvUntil = "LOGICAL_CRASH_UNTIL" // if set, stop gracefully once the point reaches it
)

const (
	crashLoop      = "crash"
	crashPerCommit = 4 // messages per serial transaction; the most a killed run can apply past the point
)

// TestCrash runs the generator in a separate process into a file-backed
// target that fsyncs each commit, with a FileMemo, kills it with SIGKILL at
// random moments and restarts it on the same files. After each kill the
// persisted point never moved backwards, every message at or before it is
// in the target, no serial transaction is half applied, and nothing beyond
// one batch after the point was applied. A last run stops gracefully and the
// target must then hold exactly the messages up to the final point.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in short mode")
	}
	dir := t.TempDir()
	memo, err := logical.NewFileMemo(filepath.Join(dir, "memo"))
	require.NoError(t, err)
	logPath := filepath.Join(dir, "target.log")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	prev := -1
	var beforeReady, torn, advanced int
	for i := 0; i < *crashKills; i++ {
		mode := "serial"
		if i%2 == 1 {
			mode = "immediate"
		}
		child := startCrashChild(t, dir, mode, -1)
		// Two runs in three first wait until the point has passed the
		// previous one, so that kills land after progress however slow
		// the machine is; the others may be killed during start-up.
		progress := i%3 != 0
		early := !progress && rng.IntN(2) == 0
		if early {
			time.Sleep(time.Duration(rng.IntN(int(20 * time.Millisecond)))) // the random kill moment
		} else {
			initial := child.ready(t)
			require.Equal(t, prev, initial, "run %d: the loop did not start from the persisted point", i)
			if progress {
				waitCrashPoint(t, memo, prev+1+rng.IntN(crashPerCommit*4), child)
			}
			time.Sleep(time.Duration(rng.IntN(int(50 * time.Millisecond)))) // the random kill moment
		}
		child.kill(t)
		if early {
			beforeReady++
		}
		cp := crashPoint(t, memo)
		require.GreaterOrEqual(t, cp, prev, "run %d: the persisted point moved backwards", i)
		st := readCrashLog(t, logPath)
		if st.torn {
			torn++
		}
		checkCrashState(t, st, cp, false)
		if cp > prev {
			advanced++
		}
		prev = cp
	}

	// A last run on the same files, stopped gracefully.
	until := prev + 50
	child := startCrashChild(t, dir, "serial", until)
	require.Equal(t, prev, child.ready(t), "the last run did not start from the persisted point")
	require.NoError(t, child.wait(), "the last run failed:\n%s", child.stderr())
	final := crashPoint(t, memo)
	require.GreaterOrEqual(t, final, until)
	checkCrashState(t, readCrashLog(t, logPath), final, true)

	t.Logf("%d kills (%d at a random moment of start-up, %d after the point advanced), %d torn log tails, final point %d",
		*crashKills, beforeReady, advanced, torn, final)
	assert.Greater(t, advanced, *crashKills/2, "the killed runs should make progress")
}

// TestCrashChild is the helper process of TestCrash; it is skipped unless
// TestCrash started it.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("helper process of TestCrash")
	}
	if err := runCrashChild(dir, os.Getenv(crashEnvMode), os.Getenv(crashEnvUntil)); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// runCrashChild runs the loop until it is killed or, with until set, until
// the point reaches it.
func runCrashChild(dir, mode, until string) error {
	memo, err := logical.NewFileMemo(filepath.Join(dir, "memo"))
	if err != nil {
		return err
	}
	target, err := openLogTarget(filepath.Join(dir, "target.log"))
	if err != nil {
		return err
	}
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	gen := logicaltest.NewGenerator(1 << 20) // more than any run reaches
	if mode == "serial" {
		gen.PerCommit = crashPerCommit
	}
	cfg := &logical.Config{
		Target:        target,
		Memo:          memo,
		Immediate:     mode == "immediate",
		RetryDelay:    time.Millisecond,
		MaxRetryDelay: 10 * time.Millisecond,
		Logger:        logger,
	}
	l, err := logical.Start(context.Background(), cfg, &logical.LoopConfig{Dialect: gen, LoopName: crashLoop, TargetSchema: "crash"})
	if err != nil {
		return err
	}
	fmt.Printf("ready %d\n", l.GetInitialPoint().(*logicaltest.Stamp).Seq)
	if until == "" {
		<-l.Stopped() // until killed
		return nil
	}
	want, err := strconv.Atoi(until)
	if err != nil {
		return err
	}
	for {
		cp, changed := l.GetConsistentPoint()
		if cp.(*logicaltest.Stamp).Seq >= want {
			break
		}
		select {
		case <-changed:
		case <-time.After(waitLong):
			return fmt.Errorf("point stuck at %v, want %d", cp, want)
		}
	}
	l.Stop(waitLong)
	<-l.Stopped()
	return nil
}

// crashChild is a running helper process.
type crashChild struct {
	cmd   *exec.Cmd
	lines chan string
	errs  *lockedBuffer
}

func startCrashChild(t *testing.T, dir, mode string, until int) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvMode+"="+mode)
	if until >= 0 {
		cmd.Env = append(cmd.Env, crashEnvUntil+"="+strconv.Itoa(until))
	}
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	c := &crashChild{cmd: cmd, lines: make(chan string, 16), errs: &lockedBuffer{}}
	cmd.Stderr = c.errs
	require.NoError(t, cmd.Start())
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c
}

// ready waits for the child's "ready <seq>" line and returns seq.
func (c *crashChild) ready(t *testing.T) int {
	t.Helper()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				_ = c.cmd.Wait()
				t.Fatalf("helper exited before it was ready:\n%s", c.stderr())
			}
			if seq, ok := strings.CutPrefix(line, "ready "); ok {
				n, err := strconv.Atoi(seq)
				require.NoError(t, err)
				return n
			}
		case <-time.After(waitLong):
			c.kill(t)
			t.Fatalf("helper not ready:\n%s", c.stderr())
		}
	}
}

// kill sends SIGKILL and reaps the child, which must still have been
// running: exiting on its own is a failure.
func (c *crashChild) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGKILL))
	err := c.cmd.Wait()
	for range c.lines { // drain, so the reader goroutine exits
	}
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "helper exited on its own:\n%s", c.stderr())
	ws, ok := exit.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.True(t, ws.Signaled(), "helper failed before the kill (%v):\n%s", err, c.stderr())
}

func (c *crashChild) wait() error {
	done := make(chan error, 1)
	go func() {
		for range c.lines {
		}
		done <- c.cmd.Wait()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(waitLong):
		_ = c.cmd.Process.Kill()
		return fmt.Errorf("helper did not finish: %v", <-done)
	}
}

func (c *crashChild) stderr() string { return c.errs.String() }

// lockedBuffer is a bytes.Buffer safe for the exec copier and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// crashPoint reads the persisted point, -1 if there is none.
func crashPoint(t *testing.T, memo *logical.FileMemo) int {
	t.Helper()
	buf, err := memo.Get(context.Background(), crashLoop)
	require.NoError(t, err)
	if buf == nil {
		return -1
	}
	var s logicaltest.Stamp
	require.NoError(t, json.Unmarshal(buf, &s), "the persisted point %q is unreadable", buf)
	return s.Seq
}

// waitCrashPoint waits until the persisted point is at least want, polling
// the memo with a generous deadline, and fails if the child exits first.
func waitCrashPoint(t *testing.T, memo *logical.FileMemo, want int, child *crashChild) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for crashPoint(t, memo) < want {
		if time.Now().After(deadline) {
			t.Fatalf("the point did not reach %d within 60s:\n%s", want, child.stderr())
		}
		time.Sleep(2 * time.Millisecond) // a bounded poll of the memo file
	}
}

// checkCrashState checks the target against the persisted point cp: every
// message up to cp is there with the right data, and nothing beyond one
// batch after it (exact: nothing beyond cp at all).
func checkCrashState(t *testing.T, st crashLog, cp int, exact bool) {
	t.Helper()
	tables := logicaltest.Tables("crash", 4)
	for _, tbl := range tables {
		rows := st.rows[tbl.Name]
		for seq := 0; seq <= cp; seq++ {
			key := "[" + strconv.Itoa(seq) + "]"
			data, ok := rows[key]
			if !ok {
				t.Fatalf("%s misses message %d, at or before the persisted point %d", tbl, seq, cp)
			}
			want := fmt.Sprintf(`{"k":%d,"table":%q}`, seq, tbl.Name)
			require.JSONEq(t, want, data, "%s row %s", tbl, key)
		}
		limit := cp + crashPerCommit
		if exact {
			limit = cp
		}
		for key := range rows {
			seq, err := strconv.Atoi(strings.Trim(key, "[]"))
			require.NoError(t, err, "bad key %q", key)
			require.LessOrEqual(t, seq, limit, "%s holds message %d, too far past the point %d", tbl, seq, cp)
		}
	}
}

// logTarget is a durable Target: an append-only log with one JSON line per
// commit (serial mode) or per Apply (fan mode), each written with a single
// write and fsynced before the call returns. A line cut short by a crash is
// an uncommitted transaction; openLogTarget drops it.
type logTarget struct {
	mu sync.Mutex
	f  *os.File
}

type logLine struct {
	Tx   bool     `json:"tx,omitempty"`
	Rows []logRow `json:"rows"`
}

type logRow struct {
	Table string          `json:"t"`
	Key   string          `json:"k"`
	Data  json.RawMessage `json:"d,omitempty"`
}

var _ logical.Target = (*logTarget)(nil)

func openLogTarget(path string) (*logTarget, error) {
	buf, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	// Drop a torn tail: everything after the last complete line.
	keep := int64(bytes.LastIndexByte(buf, '\n') + 1)
	if err := f.Truncate(keep); err != nil {
		return nil, err
	}
	if _, err := f.Seek(keep, io.SeekStart); err != nil {
		return nil, err
	}
	return &logTarget{f: f}, f.Sync()
}

func (lt *logTarget) write(tx bool, rows []logRow) error {
	line, err := json.Marshal(logLine{Tx: tx, Rows: rows})
	if err != nil {
		return err
	}
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if _, err := lt.f.Write(append(line, '\n')); err != nil {
		return err
	}
	return lt.f.Sync()
}

func toRows(table logical.Table, muts []logical.Mutation) []logRow {
	rows := make([]logRow, len(muts))
	for i, m := range muts {
		rows[i] = logRow{Table: table.Name, Key: string(m.Key)}
		if !m.IsDelete() {
			rows[i].Data = m.Data
		}
	}
	return rows
}

func (lt *logTarget) Apply(_ context.Context, table logical.Table, muts []logical.Mutation) error {
	return lt.write(false, toRows(table, muts))
}

func (lt *logTarget) Begin(context.Context) (logical.TargetTx, error) {
	return &logTx{lt: lt}, nil
}

type logTx struct {
	lt   *logTarget
	rows []logRow
}

func (x *logTx) Apply(_ context.Context, table logical.Table, muts []logical.Mutation) error {
	x.rows = append(x.rows, toRows(table, muts)...)
	return nil
}

func (x *logTx) Commit(context.Context) error { return x.lt.write(true, x.rows) }

func (x *logTx) Rollback(context.Context) error {
	x.rows = nil
	return nil
}

// crashLog is the state the log describes.
type crashLog struct {
	rows map[string]map[string]string // table -> key -> data
	n    int                          // complete lines
	torn bool                         // the file ends with an incomplete line
}

// readCrashLog replays the log. Every complete line must parse, and a
// serial transaction must hold all four tables of each of its messages: a
// crash may only cut the last line short.
func readCrashLog(t *testing.T, path string) crashLog {
	t.Helper()
	buf, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return crashLog{rows: map[string]map[string]string{}}
	}
	require.NoError(t, err)
	st := crashLog{rows: make(map[string]map[string]string)}
	complete := buf[:bytes.LastIndexByte(buf, '\n')+1]
	st.torn = len(complete) < len(buf)
	for _, raw := range bytes.Split(bytes.TrimSuffix(complete, []byte("\n")), []byte("\n")) {
		if len(raw) == 0 {
			continue
		}
		var line logLine
		require.NoError(t, json.Unmarshal(raw, &line), "log line %d is corrupt: %q", st.n, raw)
		st.n++
		perSeq := make(map[string]int)
		for _, r := range line.Rows {
			rows := st.rows[r.Table]
			if rows == nil {
				rows = make(map[string]string)
				st.rows[r.Table] = rows
			}
			if len(r.Data) == 0 {
				delete(rows, r.Key)
			} else {
				rows[r.Key] = string(r.Data)
			}
			perSeq[r.Key]++
		}
		if line.Tx {
			for key, n := range perSeq {
				require.Equal(t, 4, n, "transaction in log line %d holds %d of the 4 rows of message %s", st.n, n, key)
			}
		}
	}
	return st
}
