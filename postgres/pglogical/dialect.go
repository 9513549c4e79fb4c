// Package pglogical is a logical.Dialect over PostgreSQL logical decoding
// with the built-in pgoutput plugin (protocol version 1).
//
// ReadInto streams a replication slot from the loop's consistent point and
// acknowledges to the server only points the loop has persisted, so WAL is
// never released before the target has the data. Process turns each source
// transaction into one batch and moves the consistent point to the end of
// committed transactions. With a Progress table the target also records,
// in the same transaction as the data, how far it got, so that a crash
// between a target commit and the persisting of the point does not apply a
// transaction twice.
//
// Mutations carry a JSON object of column name to text value (or null) as
// Data, and the values of the relation's replica-identity key columns, in
// column order, as Key (for a table without one, the values of all
// columns). Columns whose unchanged TOAST value the server did not send are
// left out of Data, so a target that updates only the columns it is given
// keeps them.
package pglogical

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Defaults applied by New.
const (
	DefaultStandbyTimeout = 5 * time.Second
	DefaultFlushRows      = 1000
	DefaultFlushBytes     = 4 << 20
	// DefaultSourceTimeout matches the server's default
	// wal_sender_timeout, after which the server gives up on a silent
	// client in the same way.
	DefaultSourceTimeout = 60 * time.Second
)

// ErrSourceSilent is wrapped by the error ReadInto returns when the source
// sent nothing, not even a keepalive answering a status update that asked
// for one, for Config.SourceTimeout. The loop then restarts ReadInto after
// its retry delay, which opens a new connection.
var ErrSourceSilent = errors.New("pglogical: the source went silent")

// ErrStreamEnded is wrapped by the error ReadInto returns when the server
// ended the replication stream without an error (CopyDone,
// CommandComplete), as a walsender does when its server shuts down. The
// loop restarts ReadInto after its retry delay.
var ErrStreamEnded = errors.New("pglogical: the source server ended the replication stream")

// sentinelError is an error with its own text that matches a sentinel
// with errors.Is.
type sentinelError struct {
	sentinel error
	msg      string
}

func (e *sentinelError) Error() string        { return e.msg }
func (e *sentinelError) Is(target error) bool { return target == e.sentinel }

// Progress is where a target records the applied position, written in the
// same target transaction as the data; pgstore.Progress is one.
type Progress interface {
	// Table is the target table that receives rows {"key": K, "lsn": "X/X"}
	// with Key [K].
	Table() logical.Table
	// Applied returns the LSN last recorded for key, in text form, and
	// false if none was.
	Applied(ctx context.Context, key string) (string, bool, error)
}

// Config configures a Dialect.
type Config struct {
	// SourceConn is the source database, as a libpq URL or key=value
	// string. ReadInto adds replication=database. Required.
	SourceConn string
	// Slot is the logical replication slot (plugin pgoutput) to stream.
	// Required; see CreateSlot.
	Slot string
	// Publications are the publications to decode. At least one.
	Publications []string
	// StandbyTimeout is how often ReadInto sends a status update to the
	// server. Default 5s.
	StandbyTimeout time.Duration
	// SourceTimeout is how long ReadInto waits without receiving anything
	// from the server (data or keepalive) before it presumes the
	// connection dead and returns an error wrapping ErrSourceSilent, so
	// that the loop reconnects; it also bounds connecting and starting
	// the slot. Once a third of it passed in silence, ReadInto sends a
	// status update that asks the server to reply, so an idle but live
	// server always answers in time. Default 60s (DefaultSourceTimeout);
	// negative disables the check.
	SourceTimeout time.Duration
	// PointEvery is the least time between two consistent points set by
	// Process (each is a Memo write). Zero means StandbyTimeout; a
	// negative value sets a point after every transaction.
	PointEvery time.Duration
	// NoKeepalivePoints keeps consistent points at the ends of
	// transactions. By default a keepalive that arrives outside a
	// transaction moves the point to the server's WAL position, so that
	// the slot advances over WAL the publications do not cover.
	NoKeepalivePoints bool
	// FlushRows and FlushBytes bound the mutations Process gathers before
	// handing them to the batch. Defaults 1000 and 4 MiB.
	FlushRows  int
	FlushBytes int
	// Progress, if set, gets a row per source transaction, keyed by the
	// slot name, through the same batch. Use it in serial mode only: in
	// fan mode (Immediate) the row could be applied before the data.
	Progress Progress
	// RejectTruncate makes a TRUNCATE an error naming the tables, for
	// targets or modes (foreign-key ordering) that cannot apply it in
	// order. Otherwise a truncate becomes a mutation with
	// Meta[logical.MetaTruncate] = true, applied between two flushes.
	RejectTruncate bool
	// NoGrouping makes each source transaction a batch committed on its
	// own. By default, when the loop's Events are a logical.Grouper,
	// consecutive transactions that are queued behind each other share a
	// group (one target transaction in serial mode), committed as soon as
	// nothing more is queued; see Process.
	NoGrouping bool

	// SchemaMap maps source schemas to target schemas. A table of a
	// schema not in it goes to the loop's target schema
	// (State.GetTargetDB) if that is set, and else to the schema of the
	// same name. Two source tables that would land in one target table
	// are an error (Process fails naming both) rather than a merge.
	SchemaMap map[string]string

	// Snapshot, if set, makes Process copy the existing rows of the
	// published tables (and of tables that join later) and follow added
	// columns; see SnapshotConfig.
	Snapshot *SnapshotConfig

	// Preconnection, if set, is a replication connection to SourceConn
	// opened ahead of time (see Preconnect) that the first ReadInto uses
	// instead of connecting, if it is still good.
	Preconnection *Preconnection
}

// Dialect is a logical.Dialect over a pgoutput replication slot. Create it
// with New.
type Dialect struct {
	cfg Config

	// alone is the FinalLSN up to which source transactions are not
	// grouped with earlier ones: set when a schema change met a group
	// (see processor.quiesce), read by the next Process.
	alone atomic.Uint64
}

var _ logical.Dialect = (*Dialect)(nil)

// New validates cfg, fills in defaults and returns a Dialect.
func New(cfg Config) (*Dialect, error) {
	switch {
	case cfg.SourceConn == "":
		return nil, errors.New("pglogical: Config.SourceConn is required")
	case cfg.Slot == "":
		return nil, errors.New("pglogical: Config.Slot is required")
	case len(cfg.Publications) == 0:
		return nil, errors.New("pglogical: Config.Publications needs at least one publication")
	case cfg.StandbyTimeout < 0:
		return nil, errors.Errorf("pglogical: Config.StandbyTimeout must not be negative, got %s", cfg.StandbyTimeout)
	case cfg.SourceTimeout > 0 && cfg.SourceTimeout < 10*time.Millisecond:
		return nil, errors.Errorf("pglogical: Config.SourceTimeout must be negative (off), 0 (default) or at least 10ms, got %s", cfg.SourceTimeout)
	case cfg.FlushRows < 0 || cfg.FlushBytes < 0:
		return nil, errors.New("pglogical: Config.FlushRows and Config.FlushBytes must not be negative")
	}
	if _, err := pgconn.ParseConfig(cfg.SourceConn); err != nil {
		return nil, errors.New("pglogical: Config.SourceConn cannot be parsed")
	}
	for _, p := range cfg.Publications {
		if p == "" {
			return nil, errors.New("pglogical: Config.Publications has an empty name")
		}
	}
	if cfg.StandbyTimeout == 0 {
		cfg.StandbyTimeout = DefaultStandbyTimeout
	}
	switch {
	case cfg.SourceTimeout == 0:
		cfg.SourceTimeout = DefaultSourceTimeout
	case cfg.SourceTimeout < 0:
		cfg.SourceTimeout = 0
	}
	switch {
	case cfg.PointEvery == 0:
		cfg.PointEvery = cfg.StandbyTimeout
	case cfg.PointEvery < 0:
		cfg.PointEvery = 0
	}
	if cfg.FlushRows == 0 {
		cfg.FlushRows = DefaultFlushRows
	}
	if cfg.FlushBytes == 0 {
		cfg.FlushBytes = DefaultFlushBytes
	}
	cfg.Publications = append([]string(nil), cfg.Publications...)
	var err error
	if cfg.Snapshot, err = cfg.Snapshot.checked(cfg.Slot); err != nil {
		return nil, err
	}
	return &Dialect{cfg: cfg}, nil
}

// ZeroStamp implements logical.Dialect: a *LSN at 0/0, which makes the
// server start at the slot's confirmed position.
func (d *Dialect) ZeroStamp() logical.Stamp { return &LSN{} }

// Messages that ReadInto sends to Process.
type (
	// walMessage is one decoded pgoutput message.
	walMessage struct {
		msg pglogrepl.Message
	}
	// keepalive reports that the server has sent everything up to walEnd.
	keepalive struct {
		walEnd uint64
		at     time.Time
	}
	// unknownMessage is a pgoutput message of a type we cannot decode.
	unknownMessage struct {
		typ byte
	}
)

// ReadInto implements logical.Dialect. It opens a replication connection,
// starts the slot at the consistent point and sends every decoded message
// into ch. Every StandbyTimeout, whenever the server asks for a reply, and
// once more before it returns, it sends a status update that confirms the
// persisted consistent point and nothing later. When the server has been
// silent for a third of SourceTimeout, a status update asks it to reply;
// after SourceTimeout of silence ReadInto returns an error wrapping
// ErrSourceSilent. It returns nil once state.Stopping() closes.
func (d *Dialect) ReadInto(ctx context.Context, ch chan<- logical.Message, state logical.State) error {
	// stopCtx ends when the loop asks us to stop, so that a blocking
	// receive returns.
	stopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-state.Stopping():
			cancel()
		case <-stopCtx.Done():
		}
	}()
	stopping := func() bool {
		select {
		case <-state.Stopping():
			return true
		default:
			return false
		}
	}

	// Connecting and starting the slot are bounded too: a network path
	// that drops everything would otherwise hang here for good.
	startCtx, cancelStart := stopCtx, context.CancelFunc(func() {})
	if d.cfg.SourceTimeout > 0 {
		startCtx, cancelStart = context.WithTimeout(stopCtx, d.cfg.SourceTimeout)
	}
	defer cancelStart()
	timedOut := func(err error, what string) error {
		if errors.Is(startCtx.Err(), context.DeadlineExceeded) {
			return errors.WithStack(&sentinelError{ErrSourceSilent,
				fmt.Sprintf("pglogical: %s took longer than the source timeout %s", what, d.cfg.SourceTimeout)})
		}
		return err
	}
	conn := d.cfg.Preconnection.take(startCtx, d.cfg.SourceConn)
	var err error
	if conn == nil {
		conn, err = d.connect(startCtx)
	}
	if err != nil {
		if stopping() {
			return nil
		}
		return timedOut(err, "connecting to the source")
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()

	cp, _ := state.GetConsistentPoint()
	start := stampPos(cp)
	pubs := make([]string, len(d.cfg.Publications))
	for i, p := range d.cfg.Publications {
		pubs[i] = quoteIdent(p)
	}
	if err := startSlot(startCtx, conn, d.cfg.Slot, start, pubs); err != nil {
		if stopping() {
			return nil
		}
		return timedOut(errors.Wrapf(err, "pglogical: starting slot %s at %s", d.cfg.Slot, FormatLSN(start)),
			"starting slot "+d.cfg.Slot)
	}
	cancelStart()

	netConn := conn.Conn()
	// lastRecv is when the server was last heard from (or when we last
	// started listening again after waiting for Process); pinged says a
	// status update asking for a reply went out since.
	lastRecv, pinged := time.Now(), false
	pingAfter := d.cfg.SourceTimeout / 3
	// ack sends a status update; ping asks the server to reply at once.
	ack := func(ping bool) error {
		cp, _ := state.GetConsistentPoint()
		pos := pglogrepl.LSN(stampPos(cp))
		if d.cfg.SourceTimeout > 0 {
			// A stalled network must not block a status update for good.
			_ = netConn.SetWriteDeadline(time.Now().Add(d.cfg.SourceTimeout))
		}
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: ping,
		})
		if err != nil {
			return errors.Wrap(err, "pglogical: sending a standby status update")
		}
		pinged = pinged || ping
		return nil
	}
	nextAck := time.Now()
	// now is the time the loop works with; stale says it must be read
	// again at the top of the loop: after a receive that failed or a send
	// that waited. (A message handed over at once leaves the time of its
	// receipt, microseconds old, which spares a clock read per message.)
	var now time.Time
	stale := true
	// send hands m to Process, acknowledging on schedule while it waits.
	// It reports false when the loop is stopping.
	send := func(m logical.Message) (bool, error) {
		select { // usually Process is ready: no timer needed
		case ch <- m:
			return true, nil
		default:
		}
		// While we wait for Process the server cannot be heard; the
		// silence counts from when we listen again.
		defer func() { lastRecv, pinged, stale = time.Now(), false, true }()
		for {
			wait := time.Until(nextAck)
			if wait <= 0 {
				if err := ack(false); err != nil {
					return false, err
				}
				nextAck = time.Now().Add(d.cfg.StandbyTimeout)
				wait = d.cfg.StandbyTimeout
			}
			timer := time.NewTimer(wait)
			select {
			case ch <- m:
				timer.Stop()
				return true, nil
			case <-timer.C:
			case <-stopCtx.Done():
				timer.Stop()
				return false, nil
			}
		}
	}
	finalAck := func() {
		if ctx.Err() == nil {
			_ = ack(false)
		}
	}

	// Receives use a read deadline on the connection instead of a
	// context per message (pgconn watches every context it is given,
	// which cost more than decoding). The deadline is moved only when it
	// passed or something is due before it, so a busy stream rarely
	// touches it. A stop moves the deadline to now, which interrupts a
	// blocked receive.
	stopWatch := context.AfterFunc(stopCtx, func() { _ = netConn.SetReadDeadline(time.Now()) })
	defer stopWatch()
	var recvDeadline time.Time
	var rows rowDecoder
	frontend := conn.Frontend()
	for {
		if stale {
			now = time.Now()
		}
		stale = true
		ping := false
		if d.cfg.SourceTimeout > 0 {
			quiet := now.Sub(lastRecv)
			if quiet >= d.cfg.SourceTimeout {
				return errors.WithStack(&sentinelError{ErrSourceSilent,
					fmt.Sprintf("pglogical: no message or keepalive from the source for %s (source timeout %s); presuming the connection dead",
						quiet.Round(time.Millisecond), d.cfg.SourceTimeout)})
			}
			if !pinged && quiet >= pingAfter {
				ping, nextAck = true, now
			}
		}
		if !now.Before(nextAck) {
			if err := ack(ping); err != nil {
				return err
			}
			nextAck = now.Add(d.cfg.StandbyTimeout)
		}
		// Wake up for the next status update, the next ping and the
		// moment the silence becomes too long, whichever comes first.
		wake := nextAck
		if d.cfg.SourceTimeout > 0 {
			if at := lastRecv.Add(pingAfter); !pinged && at.Before(wake) {
				wake = at
			}
			if at := lastRecv.Add(d.cfg.SourceTimeout); at.Before(wake) {
				wake = at
			}
		}
		if !now.Before(recvDeadline) || wake.Before(recvDeadline) {
			if err := netConn.SetReadDeadline(wake); err != nil {
				return errors.Wrap(err, "pglogical: setting the receive deadline")
			}
			recvDeadline = wake
			// A stop that came before this deadline was set was
			// overwritten by it.
			if stopCtx.Err() != nil {
				finalAck()
				return nil
			}
		}
		buffered := frontend.ReadBufferLen()
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if stopping() || ctx.Err() != nil {
				finalAck()
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return errors.Wrap(err, "pglogical: receiving from the source")
		}
		// The time of receipt. A message that was buffered whole (the
		// receive read nothing from the network, so it did not wait)
		// keeps the time of the read that brought it, which spares a
		// clock read for most messages of a busy stream.
		if cd, ok := raw.(*pgproto3.CopyData); !ok || !fromBuffer(buffered, frontend.ReadBufferLen(), len(cd.Data)) {
			now = time.Now()
		}
		stale = false
		lastRecv, pinged = now, false
		var out logical.Message
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return errors.Wrap(err, "pglogical: decoding a keepalive")
				}
				if ka.ReplyRequested {
					nextAck = now
				}
				out = keepalive{walEnd: uint64(ka.ServerWALEnd), at: ka.ServerTime}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return errors.Wrap(err, "pglogical: decoding XLogData")
				}
				if out, err = decode(&rows, xld.WALData); err != nil {
					return err
				}
			default:
				return errors.Errorf("pglogical: unknown replication message type %q", msg.Data[0])
			}
		case *pgproto3.ErrorResponse:
			return errors.Wrap(pgconn.ErrorResponseToPgError(msg), "pglogical: the source ended replication")
		case *pgproto3.CopyDone, *pgproto3.CommandComplete, *pgproto3.ReadyForQuery:
			return errors.WithStack(&sentinelError{ErrStreamEnded,
				fmt.Sprintf("pglogical: the source server ended the replication stream (%s); it may be shutting down or restarting",
					strings.TrimPrefix(fmt.Sprintf("%T", raw), "*pgproto3."))})
		default:
			return errors.Errorf("pglogical: unexpected message %T from the source", raw)
		}
		if !now.Before(nextAck) {
			if err := ack(false); err != nil {
				return err
			}
			nextAck = now.Add(d.cfg.StandbyTimeout)
		}
		ok, err := send(out)
		if err != nil {
			return err
		}
		if !ok {
			finalAck()
			return nil
		}
	}
}

// fromBuffer reports whether a CopyData message of size bytes of data was
// taken whole from the receive buffer: it held before bytes before the
// receive and holds after bytes now, exactly the message's fewer (its type
// byte, length and data). A receive that read from the network (and may
// have waited) changed the buffer by more.
func fromBuffer(before, after, size int) bool {
	n := 1 + 4 + size
	return before >= n && after == before-n
}

// slotBusyWait is how long ReadInto keeps trying to start a slot that
// another connection still holds (SQLSTATE 55006, object in use): the
// walsender of this dialect's previous session needs a moment to exit
// after its connection closed, and one left by a cut connection lasts until
// the server notices. After that the error says who holds the slot.
const slotBusyWait = 5 * time.Second

// startSlot starts streaming slot from LSN start, retrying for
// slotBusyWait while another connection holds the slot.
func startSlot(ctx context.Context, conn *pgconn.PgConn, slot string, start uint64, pubs []string) error {
	opts := pglogrepl.StartReplicationOptions{PluginArgs: []string{
		"proto_version '1'",
		"publication_names " + quoteLiteral(strings.Join(pubs, ",")),
	}}
	deadline := time.Now().Add(slotBusyWait)
	for {
		err := pglogrepl.StartReplication(ctx, conn, quoteIdent(slot), pglogrepl.LSN(start), opts)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// connect opens a replication connection to the source. Errors never
// contain the connection string.
func (d *Dialect) connect(ctx context.Context) (*pgconn.PgConn, error) {
	return connectSource(ctx, d.cfg.SourceConn)
}

// connectSource opens a replication connection to sourceConn.
func connectSource(ctx context.Context, sourceConn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(sourceConn)
	if err != nil {
		return nil, errors.New("pglogical: the source connection string cannot be parsed")
	}
	cfg.RuntimeParams["replication"] = "database"
	// A deadline must only interrupt a receive; the default handler would
	// also send a cancel request to the walsender.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, errors.Wrap(err, "pglogical: connecting to the source for replication")
	}
	return conn, nil
}

// decode parses one pgoutput message: a row change with rd (see
// rowDecoder), anything else with pglogrepl. A malformed message makes
// pglogrepl's parser panic; that becomes an error.
func decode(rd *rowDecoder, data []byte) (m logical.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("pglogical: empty pgoutput message")
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
		msg, err := rd.decode(data)
		if err != nil {
			return nil, err
		}
		return walMessage{msg: msg}, nil
	case pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit, pglogrepl.MessageTypeOrigin,
		pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeType, pglogrepl.MessageTypeTruncate,
		pglogrepl.MessageTypeMessage:
	default:
		return unknownMessage{typ: data[0]}, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = errors.Errorf("pglogical: malformed pgoutput message of type %q", data[0])
		}
	}()
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, errors.Wrapf(err, "pglogical: decoding a pgoutput message of type %q", data[0])
	}
	return walMessage{msg: msg}, nil
}

// quoteIdent quotes an identifier for the replication protocol and for
// publication_names.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes a string literal.
func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// CreateSlot creates the logical replication slot slot with the pgoutput
// plugin in the source database unless it exists, and reports whether it
// did. It uses an ordinary connection, not a replication one.
func CreateSlot(ctx context.Context, sourceConn, slot string) (bool, error) {
	conn, err := pgx.Connect(ctx, sourceConn)
	if err != nil {
		return false, errors.Wrap(err, "pglogical: connecting to the source")
	}
	defer conn.Close(context.Background())
	var plugin string
	err = conn.QueryRow(ctx, `SELECT coalesce(plugin, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin)
	switch {
	case err == nil:
		if plugin != "pgoutput" {
			return false, errors.Errorf("pglogical: slot %s exists but uses plugin %q, not pgoutput", slot, plugin)
		}
		return false, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return false, errors.Wrapf(err, "pglogical: looking up slot %s", slot)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		return false, errors.Wrapf(err, "pglogical: creating slot %s", slot)
	}
	return true, nil
}

// String describes the dialect without its connection string.
func (d *Dialect) String() string {
	return fmt.Sprintf("pglogical(slot=%s, publications=%s)", d.cfg.Slot, strings.Join(d.cfg.Publications, ","))
}
