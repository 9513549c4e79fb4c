package pglogical_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/logical-go/logical/postgres/internal/pgtest"
	"github.com/logical-go/logical/postgres/pglogical"
	"github.com/stretchr/testify/require"
)

// TestConformance runs the library's dialect checks against a real slot.
// Each check gets its own database and slot with five committed
// transactions of four rows each in it, which its dialects can read as
// often as they like because nothing is acknowledged past the fake's point.
func TestConformance(t *testing.T) {
	pgtest.ServerURL(t)
	var mu sync.Mutex
	sources := map[logicaltest.TB]pglogical.Config{} // per check
	logicaltest.Conformance{
		NewDialect: func(tb logicaltest.TB) logical.Dialect {
			mu.Lock()
			defer mu.Unlock()
			if cfg, ok := sources[tb]; ok {
				d, err := pglogical.New(cfg)
				require.NoError(tb.(*testing.T), err)
				return d
			}
			t := tb.(*testing.T)
			db := pgtest.NewDB(t, "conf")
			db.Exec(t,
				`CREATE TABLE items (id INT PRIMARY KEY, name TEXT)`,
				`CREATE PUBLICATION pub FOR TABLE items`,
			)
			slot := "conf_" + db.Name[len("conf_"):]
			_, err := pglogical.CreateSlot(context.Background(), db.URL, slot)
			require.NoError(t, err)
			for tx := range 5 {
				db.Exec(t, fmt.Sprintf(`INSERT INTO items SELECT g, 'item ' || g FROM generate_series(%d, %d) g`, tx*4, tx*4+3))
			}
			cfg := pglogical.Config{
				SourceConn:        db.URL,
				Slot:              slot,
				Publications:      []string{"pub"},
				StandbyTimeout:    200 * time.Millisecond,
				PointEvery:        -1, // the checks compare points transaction by transaction
				NoKeepalivePoints: true,
			}
			sources[tb] = cfg
			d, err := pglogical.New(cfg)
			require.NoError(t, err)
			return d
		},
		Messages: 30, // the kit needs at least three consistent points
		Check: func(tb logicaltest.TB, target *logical.MemoryTarget) {
			row, ok := target.Get(logical.Table{Schema: "conformance", Name: "items"}, `["0"]`)
			if !ok {
				tb.Fatalf("row 0 missing")
				return
			}
			require.JSONEq(tb.(*testing.T), `{"id":"0","name":"item 0"}`, string(row))
		},
	}.Run(t)
}
