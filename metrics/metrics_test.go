package metrics_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/logical-go/logical/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCollect(t *testing.T) {
	obs := metrics.New()
	at := time.Unix(1700000000, 0)
	obs.Observe(logical.Stats{
		LoopName: "a", CommitsOK: 7, CommitsFailed: 2,
		Point: &logicaltest.Stamp{Seq: 41, Time: at}, PointTime: at, PointOffset: 42, Lag: 1500 * time.Millisecond,
		Backfilling: true, SourceRestarts: 3, ProcessRestarts: 4, Iterations: 5,
		LastError: "boom", LastErrorTime: at,
	})
	obs.Observe(logical.Stats{LoopName: "b", CommitsOK: 1}) // no point yet
	obs.Observe(logical.Stats{LoopName: "a", CommitsOK: 8, CommitsFailed: 2,
		Point: &logicaltest.Stamp{Seq: 42, Time: at}, PointTime: at, PointOffset: 43, Lag: time.Second,
		Backfilling: true, SourceRestarts: 3, ProcessRestarts: 4, Iterations: 5, LastErrorTime: at,
	}) // the latest wins

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(obs))
	want := `
# HELP logical_backfilling 1 while the loop runs in backfill mode, else 0.
# TYPE logical_backfilling gauge
logical_backfilling{loop="a"} 1
logical_backfilling{loop="b"} 0
# HELP logical_commits_total Batch commits by outcome.
# TYPE logical_commits_total counter
logical_commits_total{loop="a",outcome="failed"} 2
logical_commits_total{loop="a",outcome="ok"} 8
logical_commits_total{loop="b",outcome="failed"} 0
logical_commits_total{loop="b",outcome="ok"} 1
# HELP logical_iterations_total Loop iterations started.
# TYPE logical_iterations_total counter
logical_iterations_total{loop="a"} 5
logical_iterations_total{loop="b"} 0
# HELP logical_last_error_time_seconds When the last error that restarted something happened, as a Unix time.
# TYPE logical_last_error_time_seconds gauge
logical_last_error_time_seconds{loop="a"} 1.7e+09
# HELP logical_point_lag_seconds How far the last consistent point was behind the clock when it was persisted.
# TYPE logical_point_lag_seconds gauge
logical_point_lag_seconds{loop="a"} 1
# HELP logical_point_offset Offset of the last persisted consistent point.
# TYPE logical_point_offset gauge
logical_point_offset{loop="a"} 43
# HELP logical_point_time_seconds Source time of the last persisted consistent point, as a Unix time.
# TYPE logical_point_time_seconds gauge
logical_point_time_seconds{loop="a"} 1.7e+09
# HELP logical_process_restarts_total Restarts of a loop iteration after an error (Process or the iteration).
# TYPE logical_process_restarts_total counter
logical_process_restarts_total{loop="a"} 4
logical_process_restarts_total{loop="b"} 0
# HELP logical_source_restarts_total Restarts of the source (ReadInto or BackfillInto) after an error.
# TYPE logical_source_restarts_total counter
logical_source_restarts_total{loop="a"} 3
logical_source_restarts_total{loop="b"} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want)))

	obs.Forget("b")
	n, err := testutil.GatherAndCount(reg, "logical_commits_total")
	require.NoError(t, err)
	assert.Equal(t, 2, n, "b's series are gone")
}

// TestLoop exports a real loop's stats.
func TestLoop(t *testing.T) {
	const n = 50
	obs := metrics.New()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(obs))
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	l, err := logical.Start(context.Background(),
		&logical.Config{Target: logical.NewMemoryTarget(), Observer: obs, Logger: logger, RetryDelay: time.Millisecond},
		&logical.LoopConfig{Dialect: logicaltest.NewGenerator(n), LoopName: "gen", TargetSchema: "demo"})
	require.NoError(t, err)
	t.Cleanup(func() {
		l.Stop(0)
		<-l.Stopped()
	})

	deadline := time.Now().Add(time.Minute)
	for {
		got := metricValue(t, reg, "logical_point_offset")
		if got == n {
			break
		}
		require.False(t, time.Now().After(deadline), "logical_point_offset stuck at %v", got)
		time.Sleep(time.Millisecond) // polling interval
	}
	want := `
# HELP logical_commits_total Batch commits by outcome.
# TYPE logical_commits_total counter
logical_commits_total{loop="gen",outcome="failed"} 0
logical_commits_total{loop="gen",outcome="ok"} 50
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "logical_commits_total"))
	assert.Positive(t, metricValue(t, reg, "logical_point_time_seconds"))
}

// metricValue returns the value of the single series of name, or -1.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		require.Len(t, f.GetMetric(), 1)
		m := f.GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}
