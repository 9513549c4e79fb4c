package logical_test

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSentinelErrors: the errors a caller branches on match their
// sentinels with errors.Is, through the wrapping that names the loop.
func TestSentinelErrors(t *testing.T) {
	ctx := context.Background()

	t.Run("SetConsistentPoint stalled and backwards", func(t *testing.T) {
		p := newProbe()
		startLoop(t, fastConfig(t, logical.NewMemoryTarget()), &logical.LoopConfig{Dialect: p, LoopName: "sentinel", TargetSchema: "s"})
		ev := waitChan(t, p.events, "Process")
		require.NoError(t, ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 5}))

		err := ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 5})
		assert.ErrorIs(t, err, logical.ErrPointStalled)
		assert.NotErrorIs(t, err, logical.ErrPointBackwards)
		assert.EqualError(t, err, `logical: loop "sentinel": consistent point stalled: 5 -> 5`)

		err = ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: 3})
		assert.ErrorIs(t, errors.Wrap(err, "dialect"), logical.ErrPointBackwards, "also when the dialect wraps it")
		assert.NotErrorIs(t, err, logical.ErrPointStalled)
		assert.EqualError(t, err, `logical: loop "sentinel": consistent point going backwards: 5 -> 3`)
	})

	tbl := logical.Table{Schema: "s", Name: "t"}
	rows := []logical.Mutation{{Key: json.RawMessage(`[1]`), Data: json.RawMessage(`{"v":1}`)}}
	serial := func(t *testing.T) logical.Batcher {
		p := newProbe()
		startLoop(t, fastConfig(t, logical.NewMemoryTarget()), &logical.LoopConfig{Dialect: p, LoopName: "serial", TargetSchema: "s"})
		return waitChan(t, p.events, "Process")
	}
	fan := func(t *testing.T) logical.Batcher {
		return immediateBatcher(t, fastConfig(t, logical.NewMemoryTarget()))
	}
	fk := func(t *testing.T) logical.Batcher {
		b, _ := fkBatcher(t)
		return b
	}
	for _, mode := range []struct {
		name    string
		batcher func(t *testing.T) logical.Batcher
		table   logical.Table
	}{
		{"serial", serial, tbl},
		{"fan", fan, tbl},
		{"foreign keys", fk, fkParent},
	} {
		t.Run("a batch used after it ended, "+mode.name, func(t *testing.T) {
			b := mode.batcher(t)
			for _, end := range []string{"OnCommit", "OnRollback"} {
				batch, err := b.OnBegin(ctx)
				require.NoError(t, err)
				require.NoError(t, batch.OnData(ctx, "src", mode.table, rows))
				if end == "OnCommit" {
					require.NoError(t, <-batch.OnCommit(ctx))
				} else {
					require.NoError(t, batch.OnRollback(ctx))
				}
				assert.ErrorIs(t, batch.OnData(ctx, "src", mode.table, rows), logical.ErrBatchEnded, "OnData after %s", end)
				assert.ErrorIs(t, batch.Flush(ctx), logical.ErrBatchEnded, "Flush after %s", end)
				assert.ErrorIs(t, <-batch.OnCommit(ctx), logical.ErrBatchEnded, "OnCommit after %s", end)
				assert.NoError(t, batch.OnRollback(ctx), "OnRollback after %s is a no-op", end)
			}
		})
	}
}

// TestPointBackwardsIsLoggedAsError: a dialect that commits a replayed
// message and then moves its point backwards has already done damage (a
// deleted row can come back), so the restart is logged at error level
// with the likely cause, not as the usual warning.
func TestPointBackwardsIsLoggedAsError(t *testing.T) {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	hook := logtest.NewLocal(logger)
	d := newBadDialect()
	d.process = func(ctx context.Context, _ <-chan logical.Message, ev logical.Events) error {
		cp, _ := ev.GetConsistentPoint()
		seq := cp.(*logicaltest.Stamp).Seq
		if err := ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: seq + 2}); err != nil {
			return err
		}
		// A replayed message, applied and committed: the damage.
		b, err := ev.OnBegin(ctx)
		if err != nil {
			return err
		}
		if err := b.OnData(ctx, "src", badTable, oneRow); err != nil {
			return err
		}
		if err := <-b.OnCommit(ctx); err != nil {
			return err
		}
		return ev.SetConsistentPoint(ctx, &logicaltest.Stamp{Seq: seq + 1})
	}
	cfg := fastConfig(t, logicaltest.NewRecorder())
	cfg.Logger = logger
	startLoop(t, cfg, &logical.LoopConfig{Dialect: d, LoopName: "backwards", TargetSchema: "s"})

	var entry *logrus.Entry
	deadline := time.Now().Add(waitLong)
	for entry == nil {
		for _, e := range hook.AllEntries() {
			if err, ok := e.Data[logrus.ErrorKey].(error); ok && errors.Is(err, logical.ErrPointBackwards) {
				entry = e
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "the restart after the point went backwards was not logged")
		time.Sleep(time.Millisecond) // polling interval
	}
	assert.Equal(t, logrus.ErrorLevel, entry.Level, "logged as %q: %s", entry.Level, entry.Message)
	assert.Contains(t, entry.Message, "Process did not skip messages at or before the consistent point")
	assert.Equal(t, "backwards", entry.Data["loop"])
}
