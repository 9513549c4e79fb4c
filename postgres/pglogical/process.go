package pglogical

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/logical-go/logical"
	"github.com/logical-go/logical/postgres/internal/jsontext"
	"github.com/pkg/errors"
)

// Process implements logical.Dialect. Each source transaction becomes one
// batch, opened at its first row change (empty transactions open none) and
// committed at its Commit message; after the batch committed, the end of
// the transaction becomes the next consistent point, set at most once per
// Config.PointEvery and always before Process returns. Transactions that end
// before the consistent point (or the target's recorded progress) are
// skipped, as are those seen again after ReadInto restarted. A keepalive
// that arrives outside a transaction moves the point to the server's WAL
// position (unless Config.NoKeepalivePoints), so an idle or filtered
// source still lets the slot advance.
//
// When events is a logical.Grouper (the loop's are) and Config.NoGrouping
// is off, consecutive transactions share one group (one target
// transaction in serial mode) while more messages are queued in ch; the
// group commits as soon as ch is empty, so an idle source sees no added
// latency, and the point moves past each transaction once its group
// committed. With a logical.AsyncGrouper the commit runs in the
// background while the next group is read; that group commits once ch is
// empty and the one before it has committed.
func (d *Dialect) Process(ctx context.Context, ch <-chan logical.Message, events logical.Events) error {
	p := &processor{d: d, events: events, rels: make(map[uint32]*relation), sources: make(map[logical.Table]string)}
	if g, ok := events.(logical.Grouper); ok && !d.cfg.NoGrouping {
		p.grouper = g
		p.async, _ = g.(logical.AsyncGrouper)
	}
	p.snap = d.newSnapGate() // snapshot.go
	defer p.snap.close()
	cp, _ := events.GetConsistentPoint()
	p.persisted = stampPos(cp)
	p.committed = p.persisted
	if d.cfg.Progress != nil {
		text, ok, err := d.cfg.Progress.Applied(ctx, d.cfg.Slot)
		if err != nil {
			return err
		}
		if ok {
			pos, err := ParseLSN(text)
			if err != nil {
				return errors.Wrapf(err, "pglogical: the target's progress for slot %s", d.cfg.Slot)
			}
			if pos > p.committed {
				p.committed = pos
			}
			p.recorded = pos
		}
	}
	defer p.abandon(context.WithoutCancel(ctx))

	timer := time.NewTimer(0)
	defer timer.Stop()
	// armed is when the timer fires, zero once it fired: it is reset only
	// when that changes, not after every message.
	armed := time.Now()
	// burst counts the messages taken from ch without the full select:
	// while messages are queued, most are taken with a plain receive, and
	// every burstMax-th the select below also looks at the stop signals.
	// (The select cost more than handling most messages.) Commit results
	// that arrive meanwhile are taken by settle.
	burst := 0
	for {
		var msg logical.Message
		received, open := false, false
		if burst < burstMax {
			select {
			case msg, open = <-ch:
				received = true
				burst++
			default:
			}
		}
		if !received {
			burst = 0
			// The result of the oldest transaction in flight: a group
			// that commits in the background sends it while Process
			// reads on.
			var first <-chan error
			if len(p.inflight) > 0 {
				first = p.inflight[0].result
			}
			select {
			case err := <-first:
				if err := p.settled(err); err != nil {
					return err
				}
			case msg, open = <-ch:
				received = true
			case <-events.Stopping():
				return p.finish(ctx)
			case <-ctx.Done():
				return ctx.Err()
			case <-timer.C:
				armed = time.Time{}
			}
		}
		if received {
			if !open {
				return p.finish(ctx)
			}
			if err := p.handle(ctx, msg); err != nil {
				return err
			}
		}
		// Nothing more to read: commit what is grouped, unless a group
		// committed before is still being applied (serial mode over a
		// ChainTx, fan mode): then the open group grows, and that
		// group's results, taken in the select above, are the cue to try
		// again. With a logical.AsyncGrouper the commit runs in the
		// background while Process reads on; otherwise its results are
		// there when CommitGroup returned (serial mode) or arrive later
		// (fan mode).
		if len(ch) == 0 && p.grouper != nil && p.batch == nil && len(p.inflight) > 0 && !p.groupBusy() {
			if err := p.startGroup(ctx); err != nil {
				return err
			}
		}
		if err := p.settle(); err != nil {
			return err
		}
		if err := p.maybeSetPoint(ctx, false); err != nil {
			return err
		}
		// Wake up when a throttled point becomes due, unless only a
		// message can make it possible.
		if at, ok := p.pointDue(); ok && !at.Equal(armed) {
			timer.Reset(max(time.Until(at), 0))
			armed = at
		}
	}
}

// burstMax is how many messages in a row Process takes from its channel
// without looking at the stop signals.
const burstMax = 64

// pointDue says when the loop should wake up to set a throttled point,
// and false if there is nothing to set or setting it waits for a message
// (the commit of the open transaction, which records its own end).
func (p *processor) pointDue() (time.Time, bool) {
	if p.committed <= p.persisted || p.waitsForCommit() {
		return time.Time{}, false
	}
	return p.lastSet.Add(p.d.cfg.PointEvery), true
}

// waitsForCommit reports whether the committed position can only become
// the consistent point once the target records it, which waits for the
// open transaction's commit.
func (p *processor) waitsForCommit() bool {
	return p.d.cfg.Progress != nil && p.recorded < p.committed && (p.batch != nil || len(p.inflight) > 0)
}

// relation is what a Relation message said about a source table.
type relation struct {
	source    string // "schema.name" at the source
	namespace string
	name      string
	columns   []string
	key       []int // indexes of the key columns; all columns if none
	// noKey is set when the key is the whole row (REPLICA IDENTITY FULL,
	// or none): the mutations carry logical.MetaNoKey.
	noKey bool

	quoted [][]byte // JSON-quoted column names with a colon; see quotedNames

	// target is the target table, as p.target returned it when the
	// relation arrived (the schema map and the loop's target schema do
	// not change), for flush and truncate.
	target logical.Table
}

// processor is the state of one Process call, used by its goroutine only.
type processor struct {
	d      *Dialect
	events logical.Events
	rels   map[uint32]*relation
	// sources is the source table of each target table seen.
	sources map[logical.Table]string
	snap    *snapGate // Config.Snapshot's copies, nil without

	inTx     bool // between Begin and Commit
	skipping bool // the open transaction was applied already
	begin    *pglogrepl.BeginMessage
	batch    logical.Batch // opened at the transaction's first change

	// The mutations gathered for one table, handed over when the table
	// changes, when they grow too many, and at commit.
	pending      []logical.Mutation
	pendingBytes int
	pendingRel   *relation

	grouper  logical.Grouper      // nil without grouping
	async    logical.AsyncGrouper // grouper, if it commits in the background
	inflight []inflight           // committed batches whose result is pending, in order
	// A keepalive position that arrived while batches were in flight,
	// applied once they all committed.
	heldKeepalive keepalive

	committed     uint64    // end of the last transaction the target has
	committedTime time.Time // its commit time
	persisted     uint64    // the point last set (or loaded)
	recorded      uint64    // the position last written to Config.Progress
	lastSet       time.Time

	progressKey  json.RawMessage // of the progress row, see record
	progressData []byte          // its data up to the LSN
	progressBuf  []byte          // free space for the data of progress rows
}

// inflight is a transaction whose batch's OnCommit result is pending.
type inflight struct {
	end    uint64
	at     time.Time
	result <-chan error
}

// handle processes one message.
func (p *processor) handle(ctx context.Context, m logical.Message) error {
	if logical.IsRollback(m) {
		return p.rollback(ctx)
	}
	if p.snap != nil { // snapshot.go
		if drop, err := p.snapshotGate(ctx, m); err != nil || drop {
			return err
		}
	}
	switch m := m.(type) {
	case keepalive:
		if p.d.cfg.NoKeepalivePoints || p.inTx {
			return nil
		}
		if len(p.inflight) > 0 { // the position is past them
			if m.walEnd > p.heldKeepalive.walEnd {
				p.heldKeepalive = m
			}
			return nil
		}
		if m.walEnd > p.committed {
			p.committed, p.committedTime = m.walEnd, m.at
		}
		return nil
	case unknownMessage:
		return errors.Errorf("pglogical: unknown pgoutput message type %q", m.typ)
	case walMessage:
		return p.handleWAL(ctx, m.msg)
	default:
		return errors.Errorf("pglogical: unexpected message %T", m)
	}
}

// handleWAL processes one pgoutput message.
func (p *processor) handleWAL(ctx context.Context, m pglogrepl.Message) error {
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		return p.relation(m)
	case *pglogrepl.BeginMessage:
		if p.inTx {
			return errors.New("pglogical: Begin inside a transaction")
		}
		p.inTx, p.begin = true, m
		// A transaction whose commit record starts before the point was
		// applied already: the point is the end of a commit record.
		p.skipping = uint64(m.FinalLSN) < p.committed
	case *pglogrepl.InsertMessage:
		return p.change(ctx, m.RelationID, 0, nil, m.Tuple, true)
	case *pglogrepl.UpdateMessage:
		return p.change(ctx, m.RelationID, m.OldTupleType, m.OldTuple, m.NewTuple, false)
	case *pglogrepl.DeleteMessage:
		if m.OldTuple == nil {
			return errors.New("pglogical: delete without a key")
		}
		return p.change(ctx, m.RelationID, m.OldTupleType, m.OldTuple, nil, false)
	case *pglogrepl.TruncateMessage:
		return p.truncate(ctx, m)
	case *pglogrepl.CommitMessage:
		return p.commit(ctx, m)
	case *pglogrepl.OriginMessage, *pglogrepl.TypeMessage, *pglogrepl.LogicalDecodingMessage:
		// Nothing to apply.
	default:
		return errors.Errorf("pglogical: unsupported pgoutput message type %s", m.Type())
	}
	return nil
}

// relation records a table's columns. A second source table for the same
// target table is an error.
func (p *processor) relation(m *pglogrepl.RelationMessage) error {
	rel := &relation{source: m.Namespace + "." + m.RelationName, namespace: m.Namespace, name: m.RelationName}
	for i, c := range m.Columns {
		rel.columns = append(rel.columns, c.Name)
		if c.Flags&1 != 0 {
			rel.key = append(rel.key, i)
		}
	}
	rel.noKey = m.ReplicaIdentity == 'f' || len(rel.key) == 0
	if len(rel.key) == 0 {
		for i := range rel.columns {
			rel.key = append(rel.key, i)
		}
	}
	p.rels[m.RelationID] = rel
	target := p.target(rel)
	rel.target = target
	if other, ok := p.sources[target]; ok && other != rel.source {
		return errors.Errorf("pglogical: source tables %s and %s would both be written to %s; map their schemas to different target schemas",
			other, rel.source, target)
	}
	p.sources[target] = rel.source
	return nil
}

// target returns the target table of rel.
func (p *processor) target(rel *relation) logical.Table {
	return logical.Table{Schema: TargetSchema(rel.namespace, p.d.cfg.SchemaMap, p.events.GetTargetDB()), Name: rel.name}
}

// TargetSchema is the target schema of a source table in schema source
// (see Config.SchemaMap): mapped, else fallback if not empty, else the
// source schema itself.
func TargetSchema(source string, schemaMap map[string]string, fallback string) string {
	if s, ok := schemaMap[source]; ok {
		return s
	}
	if fallback != "" {
		return fallback
	}
	return source
}

// change turns a row change into mutations: new is nil for a delete, old
// is nil for an insert and for an update that kept the key (with REPLICA
// IDENTITY DEFAULT). oldType is 'K' (key only) or 'O' (the full old row).
// An update that changes the key is a delete of the old key and an upsert
// of the new one. An insert's mutation carries Meta[logical.MetaInsert].
func (p *processor) change(ctx context.Context, relID uint32, oldType uint8, old, new *pglogrepl.TupleData, insert bool) error {
	if !p.inTx {
		return errors.New("pglogical: row change outside a transaction")
	}
	if p.skipping {
		return nil
	}
	rel := p.rels[relID]
	if rel == nil {
		return errors.Errorf("pglogical: row change for unknown relation %d", relID)
	}
	mut := logical.Mutation{Time: p.begin.CommitTime}
	switch {
	case rel.noKey && insert:
		mut.Meta = noKeyInsertMeta
	case rel.noKey:
		mut.Meta = noKeyMeta
	case insert:
		mut.Meta = insertMeta
	}
	var err error
	if old != nil && oldType == pglogrepl.UpdateMessageTupleTypeOld {
		if mut.Before, err = rowJSON(rel, old); err != nil {
			return err
		}
		// The full old row (REPLICA IDENTITY FULL) has the values of
		// unchanged TOAST columns that the new one lacks.
		new = withOldValues(new, old)
	}
	if new == nil { // delete
		if mut.Key, err = keyJSON(rel, old); err != nil {
			return err
		}
		if mut.Before == nil {
			// For a target without a key, which finds the row by it.
			if mut.Before, err = keyObjectJSON(rel, old); err != nil {
				return err
			}
		}
		return p.add(ctx, rel, mut)
	}
	if mut.Data, err = rowJSON(rel, new); err != nil {
		return err
	}
	if mut.Key, err = keyJSON(rel, new); err != nil {
		return err
	}
	if old != nil {
		oldKey, err := keyJSON(rel, old)
		if err != nil {
			return err
		}
		if !bytes.Equal(oldKey, mut.Key) {
			if mut.Before != nil || hasUnchanged(new) {
				// One mutation whose Before has the old row (or key)
				// moves the row: a delete and an upsert would lose the
				// values the server did not send, and in a target
				// table without a key would delete the wrong one of
				// two equal rows. (With REPLICA IDENTITY FULL every
				// update that changes a value is such a move.)
				if mut.Before == nil {
					if mut.Before, err = keyObjectJSON(rel, old); err != nil {
						return err
					}
				}
				if rel.noKey {
					// Fan mode keeps such a table's mutations in
					// order on one shard (MetaNoKey): no need to
					// wait for everything before and after.
					return p.add(ctx, rel, mut)
				}
				return p.addAlone(ctx, rel, mut)
			}
			before, err := keyObjectJSON(rel, old)
			if err != nil {
				return err
			}
			del := logical.Mutation{Key: oldKey, Before: before, Time: mut.Time, Meta: mut.Meta}
			return p.add(ctx, rel, del, mut)
		}
	}
	return p.add(ctx, rel, mut)
}

// hasUnchanged reports whether a tuple lacks an unchanged TOAST value.
func hasUnchanged(t *pglogrepl.TupleData) bool {
	for _, c := range t.Columns {
		if c.DataType == pglogrepl.TupleDataTypeToast {
			return true
		}
	}
	return false
}

// withOldValues returns new with its unchanged TOAST values taken from
// old, the full old row; new itself if it lacks none.
func withOldValues(new, old *pglogrepl.TupleData) *pglogrepl.TupleData {
	if new == nil || !hasUnchanged(new) || len(old.Columns) != len(new.Columns) {
		return new
	}
	out := &pglogrepl.TupleData{ColumnNum: new.ColumnNum, Columns: make([]*pglogrepl.TupleDataColumn, len(new.Columns))}
	for i, c := range new.Columns {
		if c.DataType == pglogrepl.TupleDataTypeToast && old.Columns[i].DataType != pglogrepl.TupleDataTypeToast {
			c = old.Columns[i]
		}
		out.Columns[i] = c
	}
	return out
}

// addAlone queues a mutation that touches two keys (a key move) so that
// in fan mode it is applied after everything before it and before
// everything after it: the mutations of either key may be in other
// shards. The batch is opened for the Flush before even when the move is
// its transaction's first change: the group it joins may hold, or still
// be applying, earlier transactions' changes of the old key.
func (p *processor) addAlone(ctx context.Context, rel *relation, mut logical.Mutation) error {
	if err := p.flush(ctx); err != nil {
		return err
	}
	if err := p.openBatch(ctx); err != nil {
		return err
	}
	if err := p.batch.Flush(ctx); err != nil {
		return err
	}
	if err := p.add(ctx, rel, mut); err != nil {
		return err
	}
	if err := p.flush(ctx); err != nil {
		return err
	}
	return p.batch.Flush(ctx)
}

// insertMeta is the Meta of every insert's mutation, shared: nobody
// writes to a mutation's Meta.
var insertMeta = map[string]any{logical.MetaInsert: true}

// noKeyMeta and noKeyInsertMeta are the Meta of the mutations of a
// relation whose key is the whole row (fan mode then keeps their order,
// see logical.MetaNoKey), shared like insertMeta.
var (
	noKeyMeta       = map[string]any{logical.MetaNoKey: true}
	noKeyInsertMeta = map[string]any{logical.MetaNoKey: true, logical.MetaInsert: true}
)

// rowJSON encodes a tuple as a JSON object, leaving out unchanged TOAST
// values.
func rowJSON(rel *relation, t *pglogrepl.TupleData) (json.RawMessage, error) {
	if len(t.Columns) != len(rel.columns) {
		return nil, errors.Errorf("pglogical: %s: row has %d columns, the relation %d", rel.source, len(t.Columns), len(rel.columns))
	}
	names := rel.quotedNames()
	size := 2
	for i, c := range t.Columns {
		size += len(names[i]) + len(c.Data) + 8
	}
	buf := make([]byte, 0, size)
	buf = append(buf, '{')
	first := true
	var err error
	for i, c := range t.Columns {
		if c.DataType == pglogrepl.TupleDataTypeToast {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, names[i]...)
		if buf, err = appendValue(buf, rel, i, c); err != nil {
			return nil, err
		}
	}
	buf = append(buf, '}')
	return buf, nil
}

// keyJSON encodes the key columns of a tuple as a JSON array.
func keyJSON(rel *relation, t *pglogrepl.TupleData) (json.RawMessage, error) {
	if len(t.Columns) != len(rel.columns) {
		return nil, errors.Errorf("pglogical: %s: row has %d columns, the relation %d", rel.source, len(t.Columns), len(rel.columns))
	}
	size := 2
	for _, i := range rel.key {
		size += len(t.Columns[i].Data) + 8
	}
	buf := make([]byte, 0, size)
	buf = append(buf, '[')
	var err error
	for n, i := range rel.key {
		if n > 0 {
			buf = append(buf, ',')
		}
		c := t.Columns[i]
		if c.DataType == pglogrepl.TupleDataTypeToast {
			return nil, errors.Errorf("pglogical: %s: key column %q was not sent", rel.source, rel.columns[i])
		}
		if buf, err = appendValue(buf, rel, i, c); err != nil {
			return nil, err
		}
	}
	buf = append(buf, ']')
	return buf, nil
}

// keyObjectJSON encodes the key columns of a tuple as a JSON object, the
// Before of a change whose old tuple has only the key.
func keyObjectJSON(rel *relation, t *pglogrepl.TupleData) (json.RawMessage, error) {
	if len(t.Columns) != len(rel.columns) {
		return nil, errors.Errorf("pglogical: %s: row has %d columns, the relation %d", rel.source, len(t.Columns), len(rel.columns))
	}
	names := rel.quotedNames()
	buf := []byte{'{'}
	var err error
	for n, i := range rel.key {
		if n > 0 {
			buf = append(buf, ',')
		}
		c := t.Columns[i]
		if c.DataType == pglogrepl.TupleDataTypeToast {
			return nil, errors.Errorf("pglogical: %s: key column %q was not sent", rel.source, rel.columns[i])
		}
		buf = append(buf, names[i]...)
		if buf, err = appendValue(buf, rel, i, c); err != nil {
			return nil, err
		}
	}
	return append(buf, '}'), nil
}

// quotedNames returns the relation's column names as JSON strings, each
// followed by a colon, made once per relation.
func (rel *relation) quotedNames() [][]byte {
	if len(rel.quoted) != len(rel.columns) {
		rel.quoted = make([][]byte, len(rel.columns))
		for i, name := range rel.columns {
			rel.quoted[i] = append(appendJSONString(nil, []byte(name)), ':')
		}
	}
	return rel.quoted
}

// appendValue appends one column value: a JSON string of its text form,
// or null.
func appendValue(buf []byte, rel *relation, i int, c *pglogrepl.TupleDataColumn) ([]byte, error) {
	switch c.DataType {
	case pglogrepl.TupleDataTypeNull:
		return append(buf, "null"...), nil
	case pglogrepl.TupleDataTypeText:
		return appendJSONString(buf, c.Data), nil
	default:
		return nil, errors.Errorf("pglogical: %s: column %q has unsupported format %q", rel.source, rel.columns[i], c.DataType)
	}
}

// appendJSONString appends s as a JSON string. Quotes, backslashes and
// control characters are escaped; invalid UTF-8 becomes U+FFFD, as
// encoding/json does. Everything else is copied as is.
func appendJSONString(buf, s []byte) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		// Runs of plain bytes (most values are nothing else) are
		// skipped a word at a time.
		if n := jsontext.PlainPrefix(s[i:]); n > 0 {
			i += n
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// add queues mutations of rel, handing over what is queued for another
// table first and flushing when the queue is full.
func (p *processor) add(ctx context.Context, rel *relation, muts ...logical.Mutation) error {
	if p.pendingRel != nil && p.pendingRel != rel {
		if err := p.flush(ctx); err != nil {
			return err
		}
	}
	if err := p.openBatch(ctx); err != nil {
		return err
	}
	p.pendingRel = rel
	if len(p.pending) == 0 && cap(p.pending) < len(muts) {
		p.pending = make([]logical.Mutation, 0, max(pendingChunk, len(muts)))
	}
	for _, m := range muts {
		p.pending = append(p.pending, m)
		p.pendingBytes += len(m.Data) + len(m.Key) + len(m.Before)
	}
	if len(p.pending) >= p.d.cfg.FlushRows || p.pendingBytes >= p.d.cfg.FlushBytes {
		return p.flush(ctx)
	}
	return nil
}

// pendingChunk is how many mutations the array that queues them holds:
// the queue of each flush is a part of it, so that a flush of one row
// (the tables of a transaction alternate) allocates nothing.
const pendingChunk = 256

// flush hands the queued mutations to the batch, which owns them after.
// They are handed over with the capacity of their length, so that an
// append by the batch copies them rather than write into the part of the
// array that queues the next ones.
func (p *processor) flush(ctx context.Context) error {
	n := len(p.pending)
	if n == 0 {
		p.pendingRel = nil
		return nil
	}
	rel, muts := p.pendingRel, p.pending[:n:n]
	p.pending, p.pendingBytes, p.pendingRel = p.pending[n:], 0, nil
	return p.batch.OnData(ctx, rel.source, rel.target, muts)
}

// one returns m alone in a slice, carved like flush carves the queue
// from the queue's array when nothing is queued.
func (p *processor) one(m logical.Mutation) []logical.Mutation {
	if len(p.pending) > 0 {
		return []logical.Mutation{m}
	}
	if cap(p.pending) == 0 {
		p.pending = make([]logical.Mutation, 0, pendingChunk)
	}
	p.pending = append(p.pending, m)
	out := p.pending[:1:1]
	p.pending = p.pending[1:]
	return out
}

// truncate deletes every row of the truncated tables, in order with the
// transaction's other changes.
func (p *processor) truncate(ctx context.Context, m *pglogrepl.TruncateMessage) error {
	if !p.inTx {
		return errors.New("pglogical: truncate outside a transaction")
	}
	if p.skipping {
		return nil
	}
	var rels []*relation
	var names []string
	for _, id := range m.RelationIDs {
		rel := p.rels[id]
		if rel == nil {
			return errors.Errorf("pglogical: truncate of unknown relation %d", id)
		}
		rels = append(rels, rel)
		names = append(names, rel.source)
	}
	if p.d.cfg.RejectTruncate {
		return errors.Errorf("pglogical: cannot apply TRUNCATE of %s", strings.Join(names, ", "))
	}
	if err := p.flush(ctx); err != nil {
		return err
	}
	if err := p.openBatch(ctx); err != nil {
		return err
	}
	// In fan mode the delete-all must not overtake or be overtaken by the
	// rows around it.
	if err := p.batch.Flush(ctx); err != nil {
		return err
	}
	// Each table gets a mutation of its own; the list of all lets a
	// target empty them together, as foreign keys between them need.
	// (Like PostgreSQL's own subscriber, CASCADE is not passed on: the
	// source lists every table it cascaded to.)
	tables := make([]logical.Table, len(rels))
	for i, rel := range rels {
		tables[i] = rel.target
	}
	meta := map[string]any{logical.MetaTruncate: true, logical.MetaTruncateTables: tables}
	if m.Option&pglogrepl.TruncateOptionRestartIdentity != 0 {
		meta[logical.MetaTruncateRestart] = true
	}
	for _, rel := range rels {
		mut := logical.Mutation{Meta: meta, Time: p.begin.CommitTime}
		if err := p.batch.OnData(ctx, rel.source, rel.target, []logical.Mutation{mut}); err != nil {
			return err
		}
	}
	return p.batch.Flush(ctx)
}

// openBatch opens the transaction's batch if it has none yet: a grouped one
// when grouping.
func (p *processor) openBatch(ctx context.Context) error {
	if p.batch != nil {
		return nil
	}
	var b logical.Batch
	var err error
	if p.grouper != nil && p.begin != nil && uint64(p.begin.FinalLSN) <= p.d.alone.Load() {
		// A transaction that met a group in quiesce starts a group of
		// its own this time.
		if err := p.commitGroup(ctx); err != nil {
			return err
		}
	}
	if p.grouper != nil {
		b, err = p.grouper.OnBeginGrouped(ctx)
	} else {
		b, err = p.events.OnBegin(ctx)
	}
	if err != nil {
		return err
	}
	p.batch = b
	return nil
}

// commit ends the open transaction: the batch commits (when grouping: its
// group, later), and its end becomes the next consistent point once the
// commit succeeded.
func (p *processor) commit(ctx context.Context, m *pglogrepl.CommitMessage) error {
	if !p.inTx {
		return errors.New("pglogical: Commit outside a transaction")
	}
	end := uint64(m.TransactionEndLSN)
	p.inTx, p.skipping = false, false
	if p.batch != nil {
		if err := p.flush(ctx); err != nil {
			return err
		}
		if err := p.record(ctx, p.batch, end, m.CommitTime); err != nil {
			return err
		}
		batch := p.batch
		p.batch = nil
		p.inflight = append(p.inflight, inflight{end: end, at: m.CommitTime, result: batch.OnCommit(ctx)})
		if p.grouper == nil {
			return p.settleWait(ctx)
		}
		return nil
	}
	if len(p.inflight) > 0 {
		// Nothing to apply, but the point must not pass the batches
		// before it: it moves with the last of them.
		p.inflight = append(p.inflight, inflight{end: end, at: m.CommitTime, result: closedNil})
		return nil
	}
	if end > p.committed {
		p.committed, p.committedTime = end, m.CommitTime
	}
	return nil
}

// closedNil is a commit result that is ready and nil.
var closedNil = func() <-chan error {
	ch := make(chan error, 1)
	ch <- nil
	close(ch)
	return ch
}()

// quiesce commits the open group before work outside the target
// transaction (a snapshot copy, a schema change at the target, creating a
// slot), so that the work neither waits on the group's locks nor moves the
// point past transactions that are not durable yet. Between source
// transactions, or before the open one wrote anything, it commits and
// waits. When the open transaction's batch holds data and shares its group
// with earlier transactions, it cannot commit part of it: it fails, and
// the replay puts that transaction in a group of its own (Dialect.alone).
func (p *processor) quiesce(ctx context.Context) error {
	if p.batch == nil {
		return p.commitGroup(ctx)
	}
	if len(p.inflight) == 0 {
		return nil // the group holds only the open transaction
	}
	at := uint64(p.begin.FinalLSN)
	if at > p.d.alone.Load() {
		p.d.alone.Store(at)
	}
	return errors.Errorf("pglogical: the source transaction ending at %s needs the target outside its transaction "+
		"(a schema change or a copy) while earlier transactions share its group; replaying it on its own", FormatLSN(at))
}

// commitGroup commits the open group, if there is one and no transaction
// is open, and waits for the results.
func (p *processor) commitGroup(ctx context.Context) error {
	if p.grouper == nil || p.batch != nil || len(p.inflight) == 0 {
		return nil
	}
	if err := p.grouper.CommitGroup(ctx); err != nil {
		return err
	}
	return p.settleWait(ctx)
}

// startGroup commits the open group, in the background if the grouper
// can (logical.AsyncGrouper). Its results are taken as they arrive.
func (p *processor) startGroup(ctx context.Context) error {
	if p.async != nil {
		return p.async.StartCommitGroup(ctx)
	}
	return p.grouper.CommitGroup(ctx)
}

// groupBusy reports whether an earlier group is still being applied in
// the background (serial mode over a ChainTx, fan mode): the open group
// then waits for its result, which wakes Process, rather than commit
// small (logical.BusyGrouper).
func (p *processor) groupBusy() bool {
	g, ok := p.grouper.(logical.BusyGrouper)
	return ok && g.GroupBusy()
}

// settle moves the committed position over the transactions whose commit
// succeeded, in order, without waiting; a failed commit is an error.
func (p *processor) settle() error {
	for len(p.inflight) > 0 {
		select {
		case err := <-p.inflight[0].result:
			if err := p.settled(err); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

// settleWait is settle waiting for every result.
func (p *processor) settleWait(ctx context.Context) error {
	for len(p.inflight) > 0 {
		if err := p.settled(wait(ctx, p.inflight[0].result)); err != nil {
			return err
		}
	}
	return nil
}

// settled takes the result err of the first in-flight transaction.
func (p *processor) settled(err error) error {
	t := p.inflight[0]
	if err != nil {
		p.inflight = p.inflight[:0]
		p.heldKeepalive = keepalive{}
		return err
	}
	p.inflight = p.inflight[1:]
	if t.end > p.committed {
		p.committed, p.committedTime = t.end, t.at
	}
	if len(p.inflight) == 0 {
		p.inflight = nil
		if ka := p.heldKeepalive; ka.walEnd > p.committed {
			p.committed, p.committedTime = ka.walEnd, ka.at
		}
		p.heldKeepalive = keepalive{}
	}
	return nil
}

// record adds the row that tells Config.Progress the target has
// everything up to end to batch.
func (p *processor) record(ctx context.Context, batch logical.Batch, end uint64, at time.Time) error {
	prog := p.d.cfg.Progress
	if prog == nil {
		return nil
	}
	if p.progressKey == nil {
		// The same for every row: the key, and the data up to the LSN.
		slot := appendJSONString(nil, []byte(p.d.cfg.Slot))
		p.progressKey = json.RawMessage("[" + string(slot) + "]")
		p.progressData = append(append([]byte(`{"key":`), slot...), `,"lsn":"`...)
	}
	// The row's data and the slice that holds it are carved from arrays
	// shared with other rows, each capped like flush caps the queue.
	size := len(p.progressData) + len(`FFFFFFFF/FFFFFFFF"}`)
	if cap(p.progressBuf)-len(p.progressBuf) < size {
		p.progressBuf = make([]byte, 0, 64*size)
	}
	start := len(p.progressBuf)
	p.progressBuf = append(appendLSN(append(p.progressBuf, p.progressData...), end), `"}`...)
	data := p.progressBuf[start:len(p.progressBuf):len(p.progressBuf)]
	p.progressBuf = p.progressBuf[len(p.progressBuf):]
	if err := batch.OnData(ctx, "", prog.Table(), p.one(logical.Mutation{Key: p.progressKey, Data: data, Time: at})); err != nil {
		return err
	}
	p.recorded = end
	return nil
}

// wait receives a batch's commit result.
func wait(ctx context.Context, result <-chan error) error {
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rollback abandons the open transaction after ReadInto failed; it will be
// sent again.
//
// A rollback of an open grouped batch rolls back its group: the
// transactions before it that are in flight are dropped too (their
// results are logical.ErrGroupRolledBack), and will be sent again, since
// the point did not move past them. Without an open batch they are whole
// transactions and their group commits.
func (p *processor) rollback(ctx context.Context) error {
	p.inTx, p.skipping = false, false
	p.pending, p.pendingBytes, p.pendingRel = nil, 0, nil
	if p.batch == nil {
		if err := p.commitGroup(ctx); err != nil {
			return err
		}
		return p.settleWait(ctx)
	}
	b := p.batch
	p.batch = nil
	err := b.OnRollback(ctx)
	for _, t := range p.inflight {
		if e := wait(ctx, t.result); e != nil && !errors.Is(e, logical.ErrGroupRolledBack) && err == nil {
			err = e
		}
	}
	p.inflight, p.heldKeepalive = nil, keepalive{}
	// The progress rows of the rolled-back group are gone: what the
	// target records is unknown now, and a lower value only costs a
	// progress row of its own at the next point.
	p.recorded = 0
	return err
}

// abandon rolls back a batch left open when Process returns.
func (p *processor) abandon(ctx context.Context) {
	if p.batch != nil {
		_ = p.rollback(ctx)
	}
	p.inflight = nil
}

// finish ends Process on a stop: the open transaction is dropped (it will
// be sent again) and the point moves to the last committed one.
func (p *processor) finish(ctx context.Context) error {
	if err := p.rollback(ctx); err != nil {
		return err
	}
	return p.maybeSetPoint(ctx, true)
}

// maybeSetPoint persists the end of the last committed transaction if it
// is new and Config.PointEvery passed since the last time (or force is set).
func (p *processor) maybeSetPoint(ctx context.Context, force bool) error {
	if p.committed <= p.persisted {
		return nil
	}
	if !force && time.Since(p.lastSet) < p.d.cfg.PointEvery {
		return nil
	}
	if cp, _ := p.events.GetConsistentPoint(); stampPos(cp) >= p.committed {
		p.persisted = stampPos(cp)
		return nil
	}
	t := p.committedTime
	if t.IsZero() {
		t = time.Now()
	}
	// A point reached without data (a keepalive, a skipped transaction)
	// is recorded in the target too, in a batch of its own, so that the
	// persisted point is never ahead of what the target says it has.
	// While a source transaction is open that waits for its commit,
	// which records its own end.
	if p.d.cfg.Progress != nil && p.recorded < p.committed {
		if p.batch != nil || len(p.inflight) > 0 {
			return nil
		}
		b, err := p.events.OnBegin(ctx)
		if err != nil {
			return err
		}
		if err := p.record(ctx, b, p.committed, t); err != nil {
			_ = b.OnRollback(ctx)
			return err
		}
		if err := wait(ctx, b.OnCommit(ctx)); err != nil {
			return err
		}
	}
	if err := p.events.SetConsistentPoint(ctx, &LSN{Pos: p.committed, Time: t}); err != nil {
		return err
	}
	p.persisted, p.lastSet = p.committed, time.Now()
	return nil
}
