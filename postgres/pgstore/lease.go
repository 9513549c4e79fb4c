package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/logical-go/logical"
	"github.com/pkg/errors"
)

// Leases hands out named, expiring leases kept in the table leases of a
// staging schema: (name text primary key, expires timestamptz, nonce text,
// holder text). Expiry is judged by the database's clock, so the clocks of
// the competing processes need not agree.
//
// A held lease is renewed in the background every third of its lifetime;
// a renewal that fails or finds the row taken cancels the lease's Context.
type Leases struct {
	pool     *pgxpool.Pool
	table    string
	lifetime time.Duration
	holder   string
}

// NewLeases creates schema and its leases table if they are missing. An
// empty schema means DefaultStagingSchema; lifetime must be at least a
// second. holder is recorded with each lease for people reading the table;
// empty means host name and process id.
func NewLeases(ctx context.Context, pool *pgxpool.Pool, schema string, lifetime time.Duration, holder string) (*Leases, error) {
	if lifetime < time.Second {
		return nil, errors.Errorf("pgstore: lease lifetime must be at least 1s, got %s", lifetime)
	}
	if schema == "" {
		schema = DefaultStagingSchema
	}
	if holder == "" {
		host, _ := os.Hostname()
		holder = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	table := TableIdent(logical.Table{Schema: schema, Name: "leases"})
	if err := ensureSchema(ctx, pool, schema, `CREATE TABLE IF NOT EXISTS `+table+` (
		name    TEXT PRIMARY KEY,
		expires TIMESTAMPTZ NOT NULL,
		nonce   TEXT NOT NULL,
		holder  TEXT NOT NULL
	)`); err != nil {
		return nil, err
	}
	return &Leases{pool: pool, table: table, lifetime: lifetime, holder: holder}, nil
}

// Lifetime returns the lifetime of a lease term.
func (l *Leases) Lifetime() time.Duration { return l.lifetime }

// Acquire takes the lease called name if nobody holds it or the holder's
// term has expired, in one statement. If it is held, the error is a
// *logical.LeaseBusyError whose Expiration is the end of the holder's term
// (in local time). The returned lease must be released.
func (l *Leases) Acquire(ctx context.Context, name string) (logical.Lease, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, errors.Wrap(err, "pgstore: lease nonce")
	}
	nonce := hex.EncodeToString(raw[:])
	// The outer SELECT reads the table as it was before the INSERT, so
	// when the lease is busy it sees the holder's expiry.
	var mine, theirs *float64
	start := time.Now()
	err := l.pool.QueryRow(ctx, `WITH acquired AS (
		INSERT INTO `+l.table+` AS l (name, expires, nonce, holder)
		VALUES ($1, now() + make_interval(secs => $2), $3, $4)
		ON CONFLICT (name) DO UPDATE
			SET expires = excluded.expires, nonce = excluded.nonce, holder = excluded.holder
			WHERE l.expires <= now()
		RETURNING expires
	)
	SELECT (SELECT extract(epoch FROM expires - now())::float8 FROM acquired),
	       (SELECT extract(epoch FROM expires - now())::float8 FROM `+l.table+` WHERE name = $1)`,
		name, l.lifetime.Seconds(), nonce, l.holder).Scan(&mine, &theirs)
	if err != nil {
		return nil, errors.Wrapf(err, "pgstore: acquiring lease %q", name)
	}
	if mine == nil {
		wait := time.Second // a racing holder whose row we could not see yet
		if theirs != nil {
			wait = time.Duration(*theirs * float64(time.Second))
		}
		return nil, &logical.LeaseBusyError{Expiration: start.Add(wait)}
	}
	return l.start(name, nonce), nil
}

// start returns a held lease and its renewal goroutine.
func (l *Leases) start(name, nonce string) *lease {
	ctx, cancel := context.WithCancel(context.Background())
	ls := &lease{leases: l, name: name, nonce: nonce, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go ls.renew()
	return ls
}

// lease is one held term.
type lease struct {
	leases *Leases
	name   string
	nonce  string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when renew returns
	once   sync.Once
}

var _ logical.Lease = (*lease)(nil)

// Context implements logical.Lease.
func (ls *lease) Context() context.Context { return ls.ctx }

// renew extends the term every third of the lifetime until the lease is
// released or a renewal fails; it owns nothing but its timer.
func (ls *lease) renew() {
	defer close(ls.done)
	defer ls.cancel()
	every := ls.leases.lifetime / 3
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ls.ctx.Done():
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(ls.ctx, every)
		tag, err := ls.leases.pool.Exec(ctx, `UPDATE `+ls.leases.table+`
			SET expires = now() + make_interval(secs => $3)
			WHERE name = $1 AND nonce = $2`, ls.name, ls.nonce, ls.leases.lifetime.Seconds())
		cancel()
		if err != nil || tag.RowsAffected() != 1 {
			return // lost: the deferred cancel tells the holder
		}
		timer.Reset(every)
	}
}

// Release implements logical.Lease: it stops the renewal and deletes the
// row if it is still ours. It may be called more than once.
func (ls *lease) Release() {
	ls.once.Do(func() {
		ls.cancel()
		<-ls.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = ls.leases.pool.Exec(ctx, `DELETE FROM `+ls.leases.table+` WHERE name = $1 AND nonce = $2`, ls.name, ls.nonce)
	})
}
