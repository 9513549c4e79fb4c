package pglogical

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/logical-go/logical"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// walsender is a fake replication server on a loopback listener: it
// accepts one connection at a time, lets it start replication, records
// the client's status updates and sends what the test tells it to.
type walsender struct {
	t  *testing.T
	ln net.Listener
	// answerPings makes it reply to a status update that requests a
	// reply with a keepalive, as a live server does.
	answerPings bool

	started    chan string  // START_REPLICATION commands
	accepted   atomic.Int32 // connections accepted
	terminated atomic.Int32 // of them closed by the client before START_REPLICATION
	updates    chan statusUpdate

	mu      sync.Mutex
	backend *pgproto3.Backend
	conn    net.Conn
	walEnd  uint64 // reported in keepalives
	done    chan struct{}
}

// statusUpdate is a parsed standby status update.
type statusUpdate struct {
	write, flush, apply uint64
	replyRequested      bool
}

func newWalsender(t *testing.T) *walsender {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	w := &walsender{t: t, ln: ln, started: make(chan string, 16), updates: make(chan statusUpdate, 1024), done: make(chan struct{})}
	go w.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		w.mu.Lock()
		if w.conn != nil {
			_ = w.conn.Close()
		}
		w.mu.Unlock()
		<-w.done
	})
	return w
}

// url is a connection string for the fake server.
func (w *walsender) url() string {
	return "postgres://u@" + w.ln.Addr().String() + "/db?sslmode=disable"
}

func (w *walsender) accept() {
	defer close(w.done)
	for {
		conn, err := w.ln.Accept()
		if err != nil {
			return
		}
		w.accepted.Add(1)
		w.serve(conn)
	}
}

// serve runs one client connection until it closes.
func (w *walsender) serve(conn net.Conn) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	msg, err := be.Receive()
	if err != nil {
		return
	}
	if _, ok := msg.(*pgproto3.Terminate); ok {
		w.terminated.Add(1) // a client that closed before streaming
		return
	}
	q, ok := msg.(*pgproto3.Query)
	if !ok {
		w.t.Errorf("walsender: got %T, want START_REPLICATION", msg)
		return
	}
	w.started <- q.String
	w.mu.Lock()
	w.backend, w.conn = be, conn
	be.Send(&pgproto3.CopyBothResponse{})
	err = be.Flush()
	w.mu.Unlock()
	if err != nil {
		return
	}
	defer func() {
		w.mu.Lock()
		w.backend, w.conn = nil, nil
		w.mu.Unlock()
	}()
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) != 34 || cd.Data[0] != 'r' {
			continue
		}
		u := statusUpdate{
			write:          binary.BigEndian.Uint64(cd.Data[1:]),
			flush:          binary.BigEndian.Uint64(cd.Data[9:]),
			apply:          binary.BigEndian.Uint64(cd.Data[17:]),
			replyRequested: cd.Data[33] != 0,
		}
		w.updates <- u
		if u.replyRequested && w.answerPings {
			w.keepalive(w.currentWalEnd(), false)
		}
	}
}

func (w *walsender) currentWalEnd() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.walEnd
}

// send sends one message to the connected client.
func (w *walsender) send(msg pgproto3.BackendMessage) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.backend == nil {
		w.t.Errorf("walsender: no client to send %T to", msg)
		return
	}
	w.backend.Send(msg)
	_ = w.backend.Flush()
}

// keepalive sends a primary keepalive message reporting walEnd.
func (w *walsender) keepalive(walEnd uint64, reply bool) {
	data := make([]byte, 18)
	data[0] = 'k'
	binary.BigEndian.PutUint64(data[1:], walEnd)
	if reply {
		data[17] = 1
	}
	w.mu.Lock()
	if walEnd > w.walEnd {
		w.walEnd = walEnd
	}
	w.mu.Unlock()
	w.send(&pgproto3.CopyData{Data: data})
}

// xlog sends a pgoutput message in XLogData starting at start.
func (w *walsender) xlog(start uint64, payload []byte) {
	data := make([]byte, 25, 25+len(payload))
	data[0] = 'w'
	binary.BigEndian.PutUint64(data[1:], start)
	binary.BigEndian.PutUint64(data[9:], start)
	data = append(data, payload...)
	w.send(&pgproto3.CopyData{Data: data})
}

// nextUpdate waits for the next status update.
func (w *walsender) nextUpdate(t *testing.T) statusUpdate {
	t.Helper()
	select {
	case u := <-w.updates:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("no status update from the client")
		return statusUpdate{}
	}
}

// beginMessage is a pgoutput Begin of a transaction whose commit record
// starts at final.
func beginMessage(final uint64) []byte {
	b := make([]byte, 21)
	b[0] = 'B'
	binary.BigEndian.PutUint64(b[1:], final)
	binary.BigEndian.PutUint32(b[17:], 7)
	return b
}

// fakeState is a logical.State whose point the test sets.
type fakeState struct {
	mu       sync.Mutex
	point    LSN
	changed  chan struct{}
	stopping chan struct{}
	stopOnce sync.Once
}

func newFakeState(pos uint64) *fakeState {
	return &fakeState{point: LSN{Pos: pos}, changed: make(chan struct{}), stopping: make(chan struct{})}
}

func (s *fakeState) GetConsistentPoint() (logical.Stamp, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.point, s.changed
}

func (s *fakeState) GetTargetDB() string { return "public" }

func (s *fakeState) SetConsistentPoint(_ context.Context, cp logical.Stamp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.point = LSN{Pos: stampPos(cp)}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *fakeState) Stopping() <-chan struct{} { return s.stopping }

func (s *fakeState) stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// readInto runs d.ReadInto against state in the background, draining its
// messages into the returned channel; the error channel gets its result.
func readInto(t *testing.T, d *Dialect, state *fakeState) (<-chan logical.Message, <-chan error) {
	t.Helper()
	ch := make(chan logical.Message, 100)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- d.ReadInto(ctx, ch, state)
	}()
	t.Cleanup(func() {
		state.stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("ReadInto did not return after a stop")
		}
		cancel()
	})
	return ch, errc
}

func newTestDialect(t *testing.T, w *walsender, cfg Config) *Dialect {
	t.Helper()
	cfg.SourceConn, cfg.Slot, cfg.Publications = w.url(), "s", []string{"p"}
	d, err := New(cfg)
	require.NoError(t, err)
	return d
}

func waitStarted(t *testing.T, w *walsender) string {
	t.Helper()
	select {
	case q := <-w.started:
		return q
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not start replication")
		return ""
	}
}

// TestReadIntoAcknowledgesOnlyThePersistedPoint: status updates carry the
// state's consistent point, never a position the client merely received,
// they answer keepalives that request a reply, and a stop sends a last one.
func TestReadIntoAcknowledgesOnlyThePersistedPoint(t *testing.T) {
	w := newWalsender(t)
	// Neither the timer nor the silence check sends updates in this test.
	d := newTestDialect(t, w, Config{StandbyTimeout: time.Hour, SourceTimeout: -1})
	state := newFakeState(0x100)
	ch, errc := readInto(t, d, state)
	assert.Contains(t, waitStarted(t, w), `START_REPLICATION SLOT "s" LOGICAL 0/100`)
	first := w.nextUpdate(t) // sent right after the start
	assert.Equal(t, uint64(0x100), first.flush)

	w.xlog(0x500, beginMessage(0x600))
	w.keepalive(0x900, true)
	u := w.nextUpdate(t)
	assert.Equal(t, statusUpdate{write: 0x100, flush: 0x100, apply: 0x100}, u, "received is not persisted")
	for _, want := range []string{"walMessage", "keepalive"} {
		select {
		case m := <-ch:
			assert.Equal(t, want, typeOf(m))
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s passed on", want)
		}
	}

	require.NoError(t, state.SetConsistentPoint(context.Background(), LSN{Pos: 0x300}))
	w.keepalive(0x900, true)
	assert.Equal(t, uint64(0x300), w.nextUpdate(t).flush)

	require.NoError(t, state.SetConsistentPoint(context.Background(), LSN{Pos: 0x400}))
	state.stop()
	select {
	case err := <-errc:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("ReadInto did not return after a stop")
	}
	assert.Equal(t, uint64(0x400), w.nextUpdate(t).flush, "a last update on stop")
}

func typeOf(m logical.Message) string {
	switch m.(type) {
	case walMessage:
		return "walMessage"
	case keepalive:
		return "keepalive"
	default:
		return "other"
	}
}

// TestReadIntoDetectsASilentSource: a server that sends nothing is first
// asked for a reply, and when none comes ReadInto fails with
// ErrSourceSilent naming the timeout.
func TestReadIntoDetectsASilentSource(t *testing.T) {
	w := newWalsender(t)
	d := newTestDialect(t, w, Config{StandbyTimeout: time.Hour, SourceTimeout: 300 * time.Millisecond})
	state := newFakeState(0x100)
	_, errc := readInto(t, d, state)
	waitStarted(t, w)
	assert.False(t, w.nextUpdate(t).replyRequested, "the first update is no ping")
	assert.True(t, w.nextUpdate(t).replyRequested, "a silent server is asked to reply")
	select {
	case err := <-errc:
		require.ErrorIs(t, err, ErrSourceSilent)
		assert.ErrorContains(t, err, "source timeout 300ms")
	case <-time.After(30 * time.Second):
		t.Fatal("ReadInto did not notice the silence")
	}
}

// TestReadIntoKeepsALiveIdleSource: a server that answers the pings
// keeps the connection, though it sends nothing else.
func TestReadIntoKeepsALiveIdleSource(t *testing.T) {
	w := newWalsender(t)
	w.answerPings = true
	// Pings go out after a third of the timeout and are answered at once:
	// a wide margin for a slow machine.
	d := newTestDialect(t, w, Config{StandbyTimeout: time.Hour, SourceTimeout: 2 * time.Second})
	state := newFakeState(0x100)
	_, errc := readInto(t, d, state)
	waitStarted(t, w)
	w.nextUpdate(t)
	for i := range 3 {
		require.True(t, w.nextUpdate(t).replyRequested, "ping %d", i)
		select {
		case err := <-errc:
			t.Fatalf("ReadInto gave up on a live server: %v", err)
		default:
		}
	}
}

// TestReadIntoReportsTheEndOfTheStream: a server that ends the COPY (as a
// walsender does when its server shuts down) is reported as such.
func TestReadIntoReportsTheEndOfTheStream(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []pgproto3.BackendMessage
		want string
	}{
		{"CopyDone", []pgproto3.BackendMessage{&pgproto3.CopyDone{}}, "(CopyDone)"},
		{"CommandComplete", []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("COPY 0")}}, "(CommandComplete)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWalsender(t)
			d := newTestDialect(t, w, Config{StandbyTimeout: time.Hour, SourceTimeout: -1})
			_, errc := readInto(t, d, newFakeState(0x100))
			waitStarted(t, w)
			w.nextUpdate(t)
			for _, m := range tc.msgs {
				w.send(m)
			}
			select {
			case err := <-errc:
				require.ErrorIs(t, err, ErrStreamEnded)
				assert.ErrorContains(t, err, "ended the replication stream "+tc.want)
			case <-time.After(30 * time.Second):
				t.Fatal("ReadInto did not notice the end of the stream")
			}
		})
	}
}

// TestReadIntoTimesOutStartingTheSlot: a server that accepts the
// connection but never answers START_REPLICATION is a silent source too.
func TestReadIntoTimesOutStartingTheSlot(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			accepted <- conn
		}
	}()
	d, err := New(Config{SourceConn: "postgres://u@" + ln.Addr().String() + "/db?sslmode=disable", Slot: "s",
		Publications: []string{"p"}, SourceTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	err = d.ReadInto(context.Background(), make(chan logical.Message, 1), newFakeState(0))
	require.ErrorIs(t, err, ErrSourceSilent)
	assert.ErrorContains(t, err, "source timeout 200ms")
	select {
	case conn := <-accepted:
		conn.Close()
	default:
	}
}

// gatedMemo is a logical.Memo whose Puts wait for the test to open the
// gate; it records what was persisted.
type gatedMemo struct {
	*logical.MemoryMemo
	putting chan struct{} // receives once per Put that waits
	gate    chan struct{}

	mu        sync.Mutex
	persisted uint64
}

func (m *gatedMemo) Put(ctx context.Context, key string, value []byte) error {
	select {
	case m.putting <- struct{}{}:
	default:
	}
	select {
	case <-m.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := m.MemoryMemo.Put(ctx, key, value); err != nil {
		return err
	}
	var cp LSN
	if err := cp.UnmarshalJSON(value); err != nil {
		return err
	}
	m.mu.Lock()
	m.persisted = cp.Pos
	m.mu.Unlock()
	return nil
}

func (m *gatedMemo) get() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.persisted
}

// TestLoopAcknowledgesIdlePointsOncePersisted runs the whole loop against
// the fake server: a keepalive on an idle stream becomes a consistent
// point, which is acknowledged, but only after the memo stored it.
func TestLoopAcknowledgesIdlePointsOncePersisted(t *testing.T) {
	w := newWalsender(t)
	d := newTestDialect(t, w, Config{StandbyTimeout: 20 * time.Millisecond, SourceTimeout: -1})
	memo := &gatedMemo{MemoryMemo: logical.NewMemoryMemo(), putting: make(chan struct{}, 1), gate: make(chan struct{})}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	loop, err := logical.Start(context.Background(), &logical.Config{Target: logical.NewMemoryTarget(), Memo: memo,
		RetryDelay: 10 * time.Millisecond, Logger: quiet},
		&logical.LoopConfig{LoopName: "idle", Dialect: d})
	require.NoError(t, err)
	t.Cleanup(func() {
		loop.Stop(0)
		<-loop.Stopped()
	})
	waitStarted(t, w)
	w.nextUpdate(t)
	w.keepalive(0x1000, false)
	select {
	case <-memo.putting:
	case <-time.After(30 * time.Second):
		t.Fatal("the keepalive did not become a consistent point")
	}
	// While the point is being persisted, updates keep confirming the old one.
	for range 3 {
		assert.Equal(t, uint64(0), w.nextUpdate(t).flush)
	}
	close(memo.gate)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case u := <-w.updates:
			require.LessOrEqual(t, u.flush, memo.get(), "acknowledged past the persisted point")
			if u.flush == 0x1000 {
				return
			}
		case <-deadline:
			t.Fatal("the idle point was never acknowledged")
		}
	}
}

func TestNewSourceTimeout(t *testing.T) {
	base := Config{SourceConn: "postgres://h/db", Slot: "s", Publications: []string{"p"}}
	cfg := base
	cfg.SourceTimeout = 5 * time.Millisecond
	_, err := New(cfg)
	assert.ErrorContains(t, err, "Config.SourceTimeout")
	d, err := New(base)
	require.NoError(t, err)
	assert.Equal(t, DefaultSourceTimeout, d.cfg.SourceTimeout)
	cfg.SourceTimeout = -1
	d, err = New(cfg)
	require.NoError(t, err)
	assert.Zero(t, d.cfg.SourceTimeout, "negative turns the check off")
}
