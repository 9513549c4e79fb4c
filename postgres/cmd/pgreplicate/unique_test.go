package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// swapSQL swaps the unique values of rows a and b in three statements,
// as one transaction or as three consecutive ones.
func swapSQL(a, b int, oneTx bool) []string {
	stmts := []string{
		fmt.Sprintf(`UPDATE swaps SET u = 'tmp' WHERE id = %d`, a),
		fmt.Sprintf(`UPDATE swaps SET u = 'u%d' WHERE id = %d`, a, b),
		fmt.Sprintf(`UPDATE swaps SET u = 'u%d' WHERE id = %d`, b, a),
	}
	if oneTx {
		return []string{"BEGIN; " + stmts[0] + "; " + stmts[1] + "; " + stmts[2] + "; COMMIT"}
	}
	return stmts
}

// TestUniqueSwap swaps the values of a secondary unique column between
// two rows in three steps, in one source transaction and in three
// consecutive ones, first as a backlog (so that the transactions are
// grouped into one target transaction and their rows folded) and then
// live. The target applies what PostgreSQL's own replication applies, row
// by row: it equals the source, and the stream does not stick on a
// unique violation.
//
// In immediate mode the test uses four fan workers: the table has a
// unique constraint besides its key, so the Target keeps it on one
// (pgstore's OneShard), in the source's order.
func TestUniqueSwap(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"serial", nil},
		{"immediate", []string{"--immediate", "--fanShards", "4"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newReplication(t, `CREATE TABLE swaps (id int PRIMARY KEY, u text NOT NULL UNIQUE, n int)`,
				`CREATE TABLE filler (id int PRIMARY KEY, v text)`)
			r.createSlot(t)
			r.src.Exec(t, `INSERT INTO swaps SELECT g, 'u' || g, 0 FROM generate_series(1, 40) g`)
			stop, _ := runLogged(t, r.args(mode.flags...))
			waitEqual(t, r, 30*time.Second, sums("swaps"))
			require.Equal(t, 0, stop())

			// Pair i (ids 2i-1, 2i) swaps its values, in one transaction
			// for even i, in three for odd i.
			swaps := func(from, to int) {
				for i := from; i < to; i++ {
					r.src.Exec(t, swapSQL(2*i-1, 2*i, i%2 == 0)...)
					r.src.Exec(t, fmt.Sprintf(`UPDATE swaps SET n = n + 1 WHERE id = %d`, 2*i))
				}
			}
			// The backlog, behind a first transaction whose commit waits
			// for a lock at the target while pgreplicate reads the swaps:
			// they are then grouped into one target transaction.
			lock, err := r.dst.Pool.Begin(t.Context())
			require.NoError(t, err)
			defer func() { _ = lock.Rollback(context.Background()) }()
			_, err = lock.Exec(t.Context(), `LOCK TABLE filler IN ACCESS EXCLUSIVE MODE`)
			require.NoError(t, err)
			r.src.Exec(t, `INSERT INTO filler VALUES (1, 'first')`)
			swaps(1, 11)
			end := query(t, r.src, `SELECT pg_current_wal_lsn()::text`)
			stop, log := runLogged(t, r.args(mode.flags...))
			pgtest.Eventually(t, 30*time.Second, "the first commit waiting and the backlog sent", func() bool {
				return query(t, r.dst, `SELECT (count(*) > 0)::text FROM pg_stat_activity
					WHERE datname = current_database() AND wait_event_type = 'Lock'`) == "true" &&
					query(t, r.src, `SELECT (count(*) > 0)::text FROM pg_stat_replication p
						JOIN pg_replication_slots s ON s.active_pid = p.pid
						WHERE s.slot_name = $1 AND p.sent_lsn >= $2::pg_lsn`, r.slot, end) == "true"
			})
			require.NoError(t, lock.Rollback(t.Context()))
			waitEqual(t, r, 30*time.Second, sums("swaps", "filler"))
			swaps(11, 21) // live
			got := waitEqual(t, r, 30*time.Second, sums("swaps", "filler"))
			assert.Contains(t, got, "swaps 40 ")
			assert.Equal(t, "u2", query(t, r.dst, `SELECT u FROM swaps WHERE id = 1`))
			require.Equal(t, 0, stop())
			// Not even once (a restart reads the backlog in smaller groups).
			assert.False(t, strings.Contains(log.String(), "duplicate key value"), "a unique violation restarted the loop")
		})
	}
}
