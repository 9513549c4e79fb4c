package logical_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type matrixCase struct {
	name                           string
	backfill, chaos, fk, immediate bool
}

var matrix = []matrixCase{
	{name: "serial"},
	{name: "serial+backfill", backfill: true},
	{name: "serial+chaos", chaos: true},
	{name: "serial+chaos+backfill", chaos: true, backfill: true},
	{name: "fk", fk: true},
	{name: "fk+backfill", fk: true, backfill: true},
	{name: "fk+backfill+chaos", fk: true, backfill: true, chaos: true},
	{name: "fk+chaos", fk: true, chaos: true},
	{name: "immediate", immediate: true},
	{name: "immediate+chaos", immediate: true, chaos: true},
}

// TestMatrix runs the generator in every mode and checks that each
// converges to the exact target state.
func TestMatrix(t *testing.T) {
	for _, tc := range matrix {
		t.Run(tc.name, func(t *testing.T) {
			runMatrix(t, tc, 0.05, 1)
		})
	}
}

// TestMatrixChaosSeeds runs the chaos modes at 1% and 5% over several
// seeds.
func TestMatrixChaosSeeds(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	for _, prob := range []float32{0.01, 0.05} {
		for seed := int64(2); seed <= 6; seed++ {
			for _, tc := range matrix {
				if !tc.chaos {
					continue
				}
				t.Run(tc.name+"/p="+strconv.FormatFloat(float64(prob), 'f', 2, 32)+"/seed="+strconv.FormatInt(seed, 10), func(t *testing.T) {
					runMatrix(t, tc, prob, seed)
				})
			}
		}
	}
}

// matrixSetup prepares a generator of n messages, a recording target and a
// config for one mode of the matrix (without chaos).
func matrixSetup(t *testing.T, tc matrixCase, n int) (*logicaltest.Generator, *logicaltest.Recorder, *logical.Config, []logical.Table) {
	tables := logicaltest.Tables("gen", 4)
	gen := logicaltest.NewGenerator(n)
	gen.Tables = tables
	target := logicaltest.NewRecorder()
	cfg := fastConfig(t, target)
	cfg.Immediate = tc.immediate
	if tc.fk {
		target.Chain(tables...)
		cfg.ForeignKeys = true
	}
	if tc.backfill {
		// Messages are a second apart and end now; the first half is
		// older than the window, so the loop starts by backfilling and
		// streams once it has caught up.
		gen.Step = time.Second
		gen.Base = time.Now().Add(-time.Duration(n) * time.Second)
		cfg.BackfillWindow = time.Duration(n/2) * time.Second
	}
	return gen, target, cfg, tables
}

func runMatrix(t *testing.T, tc matrixCase, prob float32, seed int64) {
	const n = 300
	leak := goroutines(t)
	gen, target, cfg, tables := matrixSetup(t, tc, n)
	if tc.chaos {
		cfg.ChaosProb = prob
		cfg.ChaosSeed = seed
	}
	l := startLoop(t, cfg, &logical.LoopConfig{Dialect: gen, LoopName: "matrix", TargetSchema: "gen"})
	waitForSeq(t, l, n-1)
	l.Stop(time.Second)
	waitStopped(t, l)

	assert.Equal(t, n-1, seqOf(l))
	assert.Equal(t, n, gen.Seen(), "distinct messages seen")
	for _, tbl := range tables {
		require.Equal(t, n, target.Count(tbl), "rows in %s", tbl)
		for i := 0; i < n; i++ {
			if !target.Has(tbl, "["+strconv.Itoa(i)+"]") {
				t.Fatalf("%s misses key %d", tbl, i)
			}
		}
	}
	calls := gen.Calls()
	if !tc.chaos && !tc.backfill {
		assert.Equal(t, int64(1), calls.ReadInto, "ReadInto calls")
		assert.Equal(t, int64(1), calls.ReadIntoExits, "ReadInto exits")
		assert.Equal(t, int64(1), calls.Process, "Process calls")
		assert.Equal(t, int64(1), calls.ProcessExits, "Process exits")
	}
	if tc.backfill {
		assert.Positive(t, calls.BackfillInto, "BackfillInto calls")
		assert.Positive(t, calls.ReadInto, "ReadInto calls after the switch to streaming")
	}
	if tc.fk {
		assert.Empty(t, target.Violations())
	}
	assert.Equal(t, calls.ReadInto+calls.BackfillInto, calls.ReadIntoExits+calls.BackfillIntoExits, "every fill call returned")
	assert.Equal(t, calls.Process, calls.ProcessExits, "every Process call returned")
	leak()
}
