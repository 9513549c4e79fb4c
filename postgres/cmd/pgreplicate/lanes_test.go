package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lanesTables are tables whose rows fan mode cannot spread over workers
// by Mutation.Key: with REPLICA IDENTITY FULL the key is the whole row,
// which changes with every update (and a target with a primary key finds
// the row by that key, not by the source's), and a secondary UNIQUE
// column makes rows of different keys depend on each other.
var lanesTables = []string{
	`CREATE TABLE full_rows (a int, b text)`,
	`ALTER TABLE full_rows REPLICA IDENTITY FULL`,
	`CREATE TABLE full_pk (id int PRIMARY KEY, v text)`,
	`ALTER TABLE full_pk REPLICA IDENTITY FULL`,
	`CREATE TABLE uniq (id int PRIMARY KEY, u text NOT NULL UNIQUE, n int)`,
}

// lanesChanges changes rows of lanesTables in ways whose order matters
// across keys: a row's insert and its updates and delete, a delete and a
// re-insert of the same primary key with other values, and rotations of
// unique values through a temporary one. With oneTx every round is one
// source transaction, else every statement is one.
func lanesChanges(round int, oneTx bool) []string {
	base := round * 1000
	stmts := []string{
		fmt.Sprintf(`INSERT INTO full_rows SELECT g, 'a' FROM generate_series(%d, %d) g`, base+1, base+200),
		fmt.Sprintf(`UPDATE full_rows SET b = 'b' WHERE a BETWEEN %d AND %d`, base+1, base+200),
		fmt.Sprintf(`UPDATE full_rows SET b = 'c' WHERE a BETWEEN %d AND %d AND a %% 2 = 0`, base+1, base+200),
		fmt.Sprintf(`DELETE FROM full_rows WHERE a BETWEEN %d AND %d AND a %% 3 = 0`, base+1, base+200),
		fmt.Sprintf(`INSERT INTO full_pk SELECT g, 'a' FROM generate_series(%d, %d) g`, base+1, base+200),
		fmt.Sprintf(`DELETE FROM full_pk WHERE id BETWEEN %d AND %d`, base+1, base+200),
		fmt.Sprintf(`INSERT INTO full_pk SELECT g, 'b' FROM generate_series(%d, %d) g`, base+1, base+200),
		fmt.Sprintf(`UPDATE full_pk SET v = 'c' WHERE id BETWEEN %d AND %d AND id %% 2 = 0`, base+1, base+200),
		// Rotate u over the 40 rows (row id holds uval(id, round)): row 1
		// frees its value through a temporary one, then each row takes
		// its neighbour's, one statement per row.
		`UPDATE uniq SET u = 'tmp' WHERE id = 1`,
	}
	for id := 40; id >= 1; id-- {
		stmts = append(stmts, fmt.Sprintf(`UPDATE uniq SET u = '%s', n = n + 1 WHERE id = %d`, uval(id+1, round), id))
	}
	if oneTx {
		return []string{"BEGIN; " + strings.Join(stmts, "; ") + "; COMMIT"}
	}
	return stmts
}

// uval is the unique value of row id of table uniq before round: the
// rounds rotate the values by one row each.
func uval(id, round int) string { return fmt.Sprintf("u%d", (id-1+round)%40+1) }

// TestFanLanes replicates lanesChanges with --immediate over 8 workers,
// in one source transaction per round and in one per statement, as a
// backlog (read while the target is slow, so that many transactions share
// a group and their groups are applied together) and live. The target
// must equal the source, without a restart on a unique violation.
//
// Serial mode runs the same, as the reference.
func TestFanLanes(t *testing.T) {
	for _, tc := range []struct {
		mode  string
		flags []string
		oneTx bool
	}{
		{"immediate", []string{"--immediate", "--fanShards", "8"}, true},
		{"immediate", []string{"--immediate", "--fanShards", "8"}, false},
		{"serial", nil, false},
	} {
		flags, oneTx := tc.flags, tc.oneTx
		t.Run(fmt.Sprintf("%s/oneTx=%v", tc.mode, oneTx), func(t *testing.T) {
			t.Parallel()
			r := newReplication(t, lanesTables...)
			r.src.Exec(t, `INSERT INTO uniq SELECT g, 'u' || g, 0 FROM generate_series(1, 40) g`)
			r.createSlot(t)
			// The backlog.
			for round := range 3 {
				r.src.Exec(t, lanesChanges(round, oneTx)...)
			}
			stop, log := runLogged(t, r.args(flags...))
			all := sums("full_rows", "full_pk", "uniq")
			waitEqual(t, r, time.Minute, all)
			// Live.
			for round := 3; round < 6; round++ {
				r.src.Exec(t, lanesChanges(round, oneTx)...)
			}
			got := waitEqual(t, r, time.Minute, all)
			assert.Contains(t, got, "full_pk 1200 ")
			assert.Contains(t, got, "uniq 40 ")
			require.Equal(t, 0, stop())
			assert.False(t, strings.Contains(log.String(), "duplicate key value"), "a unique violation restarted the loop")
		})
	}
}
