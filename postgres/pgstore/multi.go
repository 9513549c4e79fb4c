package pgstore

import (
	"context"

	"github.com/logical-go/logical"
)

var _ logical.MultiApplier = (*Target)(nil)

// ApplyMulti implements logical.MultiApplier: the parts are written in one
// target transaction, whose statements go to the server in one round trip
// with its COMMIT (see targetTx), instead of one round trip and one commit
// per statement as Apply costs. Fan mode uses it for the few rows of
// several tables that are ready at once, as a small source transaction
// leaves them; the parts are all written or none.
func (t *Target) ApplyMulti(ctx context.Context, parts []logical.TableMutations) error {
	tx, err := t.Begin(ctx)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if err := tx.Apply(ctx, p.Table, p.Mutations); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
	}
	return tx.Commit(ctx)
}
