package logical_test

import (
	"flag"
	"strconv"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var soakFor = flag.Duration("soak", 45*time.Second, "how long TestSoak runs, shared by the modes of the matrix")

// TestSoak runs every mode of the matrix under 5% chaos, run after run with
// new seeds, for -soak in total. Each run must converge to the exact target
// state; the restarts the loop counts must be explained by the faults the
// chaos wrapper injected; and no goroutine may be left over.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak skipped in short mode")
	}
	var modes []matrixCase
	for _, tc := range matrix {
		if tc.chaos { // the chaos entries cover every mode of the matrix
			modes = append(modes, tc)
		}
	}
	per := *soakFor / time.Duration(len(modes))
	leak := goroutines(t)
	for _, tc := range modes {
		t.Run(tc.name, func(t *testing.T) {
			var runs int
			var restarts, faults uint64
			for end := time.Now().Add(per); runs == 0 || time.Now().Before(end); runs++ {
				r, f := soakRun(t, tc, int64(1000+runs))
				if t.Failed() {
					return
				}
				restarts += r
				faults += f
			}
			t.Logf("%d runs, %d restarts for %d injected faults", runs, restarts, faults)
		})
	}
	leak()
}

// soakRun is one matrix run under 5% chaos with the given seed. It returns
// the loop's restarts and the injected faults.
func soakRun(t *testing.T, tc matrixCase, seed int64) (restarts, injected uint64) {
	const n = 200
	leak := goroutines(t)
	gen, target, cfg, tables := matrixSetup(t, tc, n)
	// The test wraps the dialect itself (the loop would do the same for
	// Config.ChaosProb) so that it can count the faults.
	chaos := logical.WithChaosSeed(gen, 0.05, seed)
	l, err := logical.Start(t.Context(), cfg, &logical.LoopConfig{Dialect: chaos, LoopName: "soak", TargetSchema: "gen"})
	require.NoError(t, err)
	waitForSeq(t, l, n-1)
	l.Stop(time.Second)
	waitStopped(t, l)

	name := tc.name + "/seed=" + strconv.FormatInt(seed, 10)
	assert.Equal(t, n, gen.Seen(), "%s: distinct messages seen", name)
	for _, tbl := range tables {
		require.Equal(t, n, target.Count(tbl), "%s: rows in %s", name, tbl)
	}
	if tc.fk {
		assert.Empty(t, target.Violations(), name)
	}
	calls := gen.Calls()
	assert.Equal(t, calls.ReadInto+calls.BackfillInto, calls.ReadIntoExits+calls.BackfillIntoExits, "%s: every fill call returned", name)
	assert.Equal(t, calls.Process, calls.ProcessExits, "%s: every Process call returned", name)

	faults, ok := logical.ChaosFaults(chaos)
	require.True(t, ok)
	var total uint64
	for what, n := range faults {
		if what != "AcquireBusy" { // a busy lease is waited out, not a failure
			total += n
		}
	}
	st := l.Stats()
	restarts = st.SourceRestarts + st.ProcessRestarts
	// Every restart has a cause, and the only causes here are injected:
	// a source restart is a failed ReadInto or BackfillInto; an iteration
	// restart is any other fault the dialect passed on. Some faults cause
	// none (a failed OnRollback the generator ignores, a fault after a
	// stop), so restarts can be fewer, never more.
	assert.LessOrEqual(t, st.SourceRestarts, faults["ReadInto"]+faults["BackfillInto"], "%s: source restarts %d, faults %v", name, st.SourceRestarts, faults)
	assert.LessOrEqual(t, restarts, total, "%s: restarts %d, faults %v", name, restarts, faults)
	if total > faults["OnRollback"] {
		assert.Positive(t, restarts, "%s: faults %v caused no restart", name, faults)
	}
	leak()
	return restarts, total
}
