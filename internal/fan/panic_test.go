package fan

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
)

// TestApplyPanicIsAnError: a panic in Apply, whether a worker or a waiting
// caller runs it, fails the batch with an error that carries the panic and
// its stack; the queue stays usable. Before the fix the mutex released
// around Apply was unlocked a second time on the way out, which is a fatal
// error no recover can catch.
func TestApplyPanicIsAnError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		workers int
	}{
		{"applied by workers or the waiting caller", 4},
		{"applied by one worker or the waiting caller", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var panics atomic.Int64
			q := New(context.Background(), Config[int, int]{
				Apply: func(_ context.Context, _ int, items []int) error {
					for _, it := range items {
						if it < 0 {
							panics.Add(1)
							panic("boom in apply")
						}
					}
					return nil
				},
				Hash:    func(i int) uint64 { return uint64(max(i, 0)) },
				Size:    func(int) int { return 1 },
				Workers: tc.workers,
				Chunk:   1,
				Limit:   1 << 20,
			})
			defer q.Close()
			ctx := context.Background()
			for round := range 20 {
				b := q.Begin()
				for i := range 8 {
					item := i
					if i == 3 {
						item = -1
					}
					if err := b.Add(ctx, round%3, []int{item}); err != nil {
						break // the batch already failed
					}
				}
				err := b.Commit(ctx)
				if err == nil {
					t.Fatalf("round %d: Commit after a panicking Apply returned nil", round)
				}
				if msg := err.Error(); !strings.Contains(msg, "panic in Apply: boom in apply") || !strings.Contains(msg, "panic_test.go") {
					t.Fatalf("round %d: the error does not carry the panic and its stack: %q", round, msg)
				}
				if q.Bytes() != 0 {
					t.Fatalf("round %d: %d bytes still queued after Commit", round, q.Bytes())
				}
			}
			// The queue still applies.
			b := q.Begin()
			if err := b.Add(ctx, 0, []int{1, 2, 3}); err != nil {
				t.Fatalf("Add after the panics: %v", err)
			}
			if err := b.Commit(ctx); err != nil {
				t.Fatalf("Commit after the panics: %v", err)
			}
			if panics.Load() == 0 {
				t.Fatal("Apply never panicked")
			}
		})
	}
}
