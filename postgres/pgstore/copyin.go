package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pkg/errors"
)

// Runs of inserts in a transaction go by COPY. A statement that would be
// an INSERT without ON CONFLICT (rows the source inserted, see MetaInsert,
// or rows of a table without a key) of at least copyMinRows rows, whose
// values are all strings or null and whose columns COPY converts as the
// INSERT would (copyIn), starts a COPY ... FROM STDIN on the transaction's
// connection instead; the next such statements into the same columns of
// the same table add their rows to it while it is open. So a large source
// transaction streams into the target: the server inserts (COPY uses
// PostgreSQL's multi-row heap inserts) while the next rows are decoded.
// Any other statement, and the commit, first ends the COPY and waits for
// its result; while it is open nothing else is queued.
//
// A COPY that fails is redone as the INSERT statements it stands for
// when the transaction's statement log allows (see targetTx): a unique
// violation of rows the source inserted as their upserts, anything else
// as plain inserts, whose failure then is what it would have been without
// COPY (with the same diagnosis of a bad value, or a segment written
// again one mutation per statement). Should the log be full, a unique
// violation makes the Target upsert into the table from then on (a
// violation of another unique constraint, write it one mutation per
// statement) and the transaction fails, so that the caller's retry writes
// without COPY.

// copyMinRows is the fewest rows that start a COPY; fewer go by INSERT,
// as they do in a pipeline with the other statements. A variable for
// tests.
var copyMinRows = 200

// copyChunks is how many encoded chunks (one per statement) may wait for
// the connection.
const copyChunks = 4

// copyRun is an open COPY of a transaction.
type copyRun struct {
	info   *tableInfo
	cols   []int
	st     stmt // describes the COPY for errors
	chunks chan []byte
	abort  bool          // set before chunks closes: fail the COPY
	done   chan struct{} // closed once err is set
	err    error
	rows   int
	plain  bool // the rows are the source's inserts into a table with a key
}

// copyReader is the COPY data: the chunks as they arrive.
type copyReader struct {
	run *copyRun
	cur []byte
}

func (r *copyReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		chunk, ok := <-r.run.chunks
		if !ok {
			if r.run.abort {
				return 0, errors.New("pgstore: the target transaction rolled back")
			}
			return 0, io.EOF
		}
		r.cur = chunk
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// copyable reports whether the rows of an insert into cols may go by COPY.
func copyable(info *tableInfo, cols []int) bool {
	if !info.copyIn {
		return false
	}
	for _, i := range cols {
		if !info.cols[i].copyIn {
			return false
		}
	}
	return true
}

// copyRows writes rows, an insert st into the columns cols of info that
// would be sql with text-array arguments, by COPY if an open one takes
// them or they are enough to start one. It reports false if it did
// nothing.
func (x *targetTx) copyRows(ctx context.Context, st stmt, sql string, info *tableInfo, cols []int, rows []row) (bool, error) {
	if x.conn == nil || x.err != nil {
		return false, nil
	}
	if run := x.copy; run != nil && (run.info != info || !sameInts(run.cols, cols)) {
		if err := x.endCopy(false); err != nil {
			return true, err
		}
	}
	if x.copy == nil {
		if len(rows) < copyMinRows || x.prevPending() {
			return false, nil
		}
		if err := x.startCopy(ctx, info, cols, st.plainInsert); err != nil {
			return true, err
		}
	}
	run := x.copy
	chunk, err := copyChunk(info, cols, rows)
	if err != nil {
		return true, err
	}
	select {
	case run.chunks <- chunk:
	case <-run.done: // it failed: the error says why
		return true, x.endCopy(false)
	}
	run.rows += len(rows)
	if !x.logFull {
		x.log = append(x.log, loggedStmt{st: st, sql: sql, copyCols: len(cols), copyData: chunk})
		// Counted as the INSERT it is replayed as.
		if x.logBytes += len(sql) + len(chunk); x.logBytes > replayBytes {
			x.log, x.logFull = nil, true
		}
	}
	return true, nil
}

// prevPending reports whether the transaction before this one on the
// connection (see CommitChain) has not ended yet: a COPY would have to
// wait for it, where statements are only queued.
func (x *targetTx) prevPending() bool {
	if x.after == nil {
		return false
	}
	select {
	case <-x.after.done:
		return false
	default:
		return true
	}
}

// startCopy sends what is queued, waits for its results and starts a COPY
// into cols of info.
func (x *targetTx) startCopy(ctx context.Context, info *tableInfo, cols []int, plain bool) error {
	x.queue(stmt{what: "beginning the target transaction"}, "BEGIN")
	if err := x.send(ctx); err != nil {
		return err
	}
	if err := x.collect(); err != nil {
		return err
	}
	run := &copyRun{
		info:   info,
		cols:   cols,
		st:     stmt{what: "inserting rows into " + info.table.String() + " by COPY", info: info},
		chunks: make(chan []byte, copyChunks),
		done:   make(chan struct{}),
		plain:  plain,
	}
	sql := copySQL(info, cols)
	pg := x.conn.Conn().PgConn()
	x.copy, x.ctx = run, ctx
	x.target.copies.Add(1)
	go func() {
		_, run.err = pg.CopyFrom(ctx, &copyReader{run: run}, sql)
		close(run.done)
	}()
	return nil
}

// endCopy ends the open COPY (with abort, makes it fail) and waits for its
// result; a failure is handled as the package comment says.
func (x *targetTx) endCopy(abort bool) error {
	run := x.copy
	if run == nil {
		return x.err
	}
	x.copy = nil
	run.abort = abort
	close(run.chunks)
	<-run.done
	if run.err == nil || abort {
		return x.err
	}
	run.st.what = "inserting " + strconv.Itoa(run.rows) + " rows into " + run.info.table.String() + " by COPY"
	// Rows already there: the table is upserted into from now on (no
	// more COPY), as after a plain insert that met one.
	conflict := false
	if run.plain {
		st := run.st
		st.plainInsert = true
		conflict = x.target.conflicted(st, run.err)
	}
	if !x.logFull {
		// Redo it as the INSERT statements it stands for.
		return x.replay(conflict)
	}
	// As collect does for the INSERT statements: the caller's retry
	// upserts, and writes one mutation per statement.
	var pgErr *pgconn.PgError
	err := run.err
	if errors.As(err, &pgErr) {
		if pgErr.Code == "23505" || pgErr.Code == "23P01" {
			x.target.setRowByRow(run.info.table, true)
		}
		if pgErr.Where != "" {
			// For a COPY: the line and column of the value that failed.
			err = errors.Wrap(err, pgErr.Where)
		}
	}
	if x.err == nil {
		x.err = x.target.failed(run.st, err)
	}
	return x.err
}

// copySQL is the COPY statement of rows of cols into info.
func copySQL(info *tableInfo, cols []int) string {
	names := make([]string, len(cols))
	for n, i := range cols {
		names[n] = Ident(info.cols[i].name)
	}
	return "COPY " + info.ident + " (" + strings.Join(names, ", ") + ") FROM STDIN"
}

// copyRows implements copier outside a transaction (fan mode): at least
// copyMinRows rows go by one COPY, which commits on its own like the
// INSERT would. If the server rejects it (nothing was written), the
// INSERT runs instead, with its fallbacks and errors.
func (p poolExec) copyRows(ctx context.Context, st stmt, _ string, info *tableInfo, cols []int, rows []row) (bool, error) {
	if len(rows) < copyMinRows || st.seg != nil && st.seg.replaced {
		return false, nil
	}
	chunk, err := copyChunk(info, cols, rows)
	if err != nil {
		return true, err
	}
	conn, err := p.target.pool.Acquire(ctx)
	if err != nil {
		return true, errors.Wrap(err, "pgstore: "+st.what)
	}
	p.target.copies.Add(1)
	_, err = conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(chunk), copySQL(info, cols))
	conn.Release()
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &pgErr):
		return false, nil
	default:
		return true, errors.Wrap(err, "pgstore: "+st.what+" by COPY")
	}
}

// copyChunk encodes rows as COPY text: the values of cols separated by
// tabs, a row a line, NULL as \N.
func copyChunk(info *tableInfo, cols []int, rows []row) ([]byte, error) {
	size := 0
	for _, r := range rows {
		size += len(cols)
		for _, i := range cols {
			size += len(r[i])
		}
	}
	buf := make([]byte, 0, size)
	for _, r := range rows {
		for n, i := range cols {
			if n > 0 {
				buf = append(buf, '\t')
			}
			v := r[i]
			switch {
			case len(v) == 0 || v[0] != '"':
				buf = append(buf, `\N`...)
			case bytes.IndexByte(v, '\\') < 0:
				// No escapes: no tab, newline or backslash either.
				buf = append(buf, v[1:len(v)-1]...)
			default:
				var s string
				if err := json.Unmarshal(v, &s); err != nil {
					return nil, errors.Errorf("pgstore: table %s: column %q: a value is not a JSON string",
						info.table, info.cols[i].name)
				}
				buf = appendCopyText(buf, s)
			}
		}
		buf = append(buf, '\n')
	}
	return buf, nil
}

// appendCopyText appends s escaped for COPY text format.
func appendCopyText(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			buf = append(buf, '\\', '\\')
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, c)
		}
	}
	return buf
}

// copyArrays turns a chunk of COPY text of ncols columns back into one
// text-array literal per column, the arguments of the INSERT it stands
// for.
func copyArrays(chunk []byte, ncols int) ([]any, error) {
	arrays := make([][]byte, ncols)
	for n := range arrays {
		arrays[n] = append(arrays[n], '{')
	}
	first := true
	for len(chunk) > 0 {
		end := bytes.IndexByte(chunk, '\n')
		if end < 0 {
			return nil, errors.New("pgstore: a COPY chunk does not end with a newline")
		}
		line := chunk[:end]
		chunk = chunk[end+1:]
		fields := bytes.Split(line, []byte{'\t'})
		if len(fields) != ncols {
			return nil, errors.Errorf("pgstore: a COPY line has %d fields, not %d", len(fields), ncols)
		}
		for n, f := range fields {
			a := arrays[n]
			if !first {
				a = append(a, ',')
			}
			if string(f) == `\N` {
				a = append(a, "NULL"...)
			} else {
				a = append(a, '"')
				for i := 0; i < len(f); i++ {
					c := f[i]
					if c == '\\' && i+1 < len(f) {
						i++
						switch f[i] {
						case 'n':
							c = '\n'
						case 'r':
							c = '\r'
						case 't':
							c = '\t'
						default:
							c = f[i]
						}
					}
					if c == '"' || c == '\\' {
						a = append(a, '\\')
					}
					a = append(a, c)
				}
				a = append(a, '"')
			}
			arrays[n] = a
		}
		first = false
	}
	args := make([]any, ncols)
	for n, a := range arrays {
		args[n] = string(append(a, '}'))
	}
	return args, nil
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
