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
// A held lease is renewed in the background every third of its lifetime.
// A renewal that fails or is slow is retried until the term would end by
// the local clock (counted from the start of the last successful renewal,
// less a twentieth for clock drift); only then, or as soon as a renewal
// finds the row taken by another holder, is the lease's Context
// cancelled. A Memo in the same database refuses writes under a lease
// that is no longer held (see Memo.Put).
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
	return l.start(name, nonce, start), nil
}

// start returns a held lease, acquired by a statement that began at
// began, and its renewal goroutine.
func (l *Leases) start(name, nonce string, began time.Time) *lease {
	ctx, cancel := context.WithCancel(context.Background())
	ls := &lease{leases: l, name: name, nonce: nonce, cancel: cancel, done: make(chan struct{})}
	// The lease travels in its context, so that a Memo can fence its
	// writes with it (the loop runs everything under this context).
	ls.ctx = context.WithValue(ctx, leaseKey{}, ls)
	go ls.renew(began)
	return ls
}

// leaseKey is the context key under which a lease's Context carries it.
type leaseKey struct{}

// heldLease returns the lease whose Context ctx derives from, if any.
func heldLease(ctx context.Context) *lease {
	ls, _ := ctx.Value(leaseKey{}).(*lease)
	return ls
}

// heldSQL is a query of the lease row while this term is still held, as
// of the moment the statement runs (clock_timestamp, not the start of its
// transaction), with the lease's name and nonce in the parameters named
// name and nonce ("$1", "$2"). The writes a lease fences (Memo.Put,
// Snapshots) use it.
func (l *lease) heldSQL(name, nonce string) string {
	return `SELECT 1 FROM ` + l.leases.table + ` WHERE name = ` + name + ` AND nonce = ` + nonce + ` AND expires > clock_timestamp()`
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
// released, taken by another holder, or its term ends by the local clock
// while renewals fail; it owns nothing but its timer. began is when the
// statement that acquired the lease started: the server's expiry is at
// least a lifetime after that.
func (ls *lease) renew(began time.Time) {
	defer close(ls.done)
	defer ls.cancel()
	lifetime := ls.leases.lifetime
	every := lifetime / 3
	retry := max(lifetime/20, 50*time.Millisecond)
	expires := began.Add(lifetime - lifetime/20)
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ls.ctx.Done():
			return
		case <-timer.C:
		}
		attempt := time.Now()
		if !attempt.Before(expires) {
			return // the term ran out while renewals failed
		}
		ctx, cancel := context.WithDeadline(ls.ctx, expires)
		tag, err := ls.leases.pool.Exec(ctx, `UPDATE `+ls.leases.table+`
			SET expires = now() + make_interval(secs => $3)
			WHERE name = $1 AND nonce = $2`, ls.name, ls.nonce, lifetime.Seconds())
		cancel()
		switch {
		case err == nil && tag.RowsAffected() == 1:
			expires = attempt.Add(lifetime - lifetime/20)
			timer.Reset(every)
		case err == nil:
			return // taken over: the deferred cancel tells the holder
		default:
			// A network blip or a slow server: try again while the
			// term lasts.
			timer.Reset(min(retry, time.Until(expires)))
		}
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
