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
)

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
	// Snapshot, if set, makes Process copy the existing rows of the
	// published tables (and of tables that join later) and follow added
	// columns; see SnapshotConfig.
	Snapshot *SnapshotConfig
}

// Dialect is a logical.Dialect over a pgoutput replication slot. Create it
// with New.
type Dialect struct {
	cfg Config
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
// persisted consistent point and nothing later. It returns nil once
// state.Stopping() closes.
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

	conn, err := d.connect(stopCtx)
	if err != nil {
		if stopping() {
			return nil
		}
		return err
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
	if err := pglogrepl.StartReplication(stopCtx, conn, quoteIdent(d.cfg.Slot), pglogrepl.LSN(start),
		pglogrepl.StartReplicationOptions{PluginArgs: []string{
			"proto_version '1'",
			"publication_names " + quoteLiteral(strings.Join(pubs, ",")),
		}}); err != nil {
		if stopping() {
			return nil
		}
		return errors.Wrapf(err, "pglogical: starting slot %s at %s", d.cfg.Slot, FormatLSN(start))
	}

	ack := func() error {
		cp, _ := state.GetConsistentPoint()
		pos := pglogrepl.LSN(stampPos(cp))
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		})
		return errors.Wrap(err, "pglogical: sending a standby status update")
	}
	nextAck := time.Now()
	// send hands m to Process, acknowledging on schedule while it waits.
	// It reports false when the loop is stopping.
	send := func(m logical.Message) (bool, error) {
		select { // usually Process is ready: no timer needed
		case ch <- m:
			return true, nil
		default:
		}
		for {
			wait := time.Until(nextAck)
			if wait <= 0 {
				if err := ack(); err != nil {
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

	// Receives use a read deadline on the connection, set once per
	// acknowledgement period, instead of a context per message (pgconn
	// watches every context it is given, which cost more than decoding).
	// A stop moves the deadline to now, which interrupts a blocked
	// receive.
	netConn := conn.Conn()
	stopWatch := context.AfterFunc(stopCtx, func() { _ = netConn.SetReadDeadline(time.Now()) })
	defer stopWatch()
	var recvDeadline time.Time
	for {
		if !time.Now().Before(nextAck) {
			if err := ack(); err != nil {
				return err
			}
			nextAck = time.Now().Add(d.cfg.StandbyTimeout)
		}
		if !recvDeadline.Equal(nextAck) {
			if err := netConn.SetReadDeadline(nextAck); err != nil {
				return errors.Wrap(err, "pglogical: setting the receive deadline")
			}
			recvDeadline = nextAck
			// A stop that came before this deadline was set was
			// overwritten by it.
			if stopCtx.Err() != nil {
				if ctx.Err() == nil {
					_ = ack()
				}
				return nil
			}
		}
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if stopping() || ctx.Err() != nil {
				if ctx.Err() == nil {
					_ = ack()
				}
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return errors.Wrap(err, "pglogical: receiving from the source")
		}
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
					nextAck = time.Now()
				}
				out = keepalive{walEnd: uint64(ka.ServerWALEnd), at: ka.ServerTime}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return errors.Wrap(err, "pglogical: decoding XLogData")
				}
				if out, err = decode(xld.WALData); err != nil {
					return err
				}
			default:
				return errors.Errorf("pglogical: unknown replication message type %q", msg.Data[0])
			}
		case *pgproto3.ErrorResponse:
			return errors.Wrap(pgconn.ErrorResponseToPgError(msg), "pglogical: the source ended replication")
		case *pgproto3.CopyDone:
			return errors.New("pglogical: the source ended replication")
		default:
			return errors.Errorf("pglogical: unexpected message %T from the source", raw)
		}
		if !time.Now().Before(nextAck) {
			if err := ack(); err != nil {
				return err
			}
			nextAck = time.Now().Add(d.cfg.StandbyTimeout)
		}
		ok, err := send(out)
		if err != nil {
			return err
		}
		if !ok {
			if ctx.Err() == nil {
				_ = ack()
			}
			return nil
		}
	}
}

// connect opens a replication connection to the source. Errors never
// contain the connection string.
func (d *Dialect) connect(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(d.cfg.SourceConn)
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

// decode parses one pgoutput message. A malformed message makes the
// parser panic; that becomes an error.
func decode(data []byte) (m logical.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("pglogical: empty pgoutput message")
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeBegin, pglogrepl.MessageTypeCommit, pglogrepl.MessageTypeOrigin,
		pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeType, pglogrepl.MessageTypeInsert,
		pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate,
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
