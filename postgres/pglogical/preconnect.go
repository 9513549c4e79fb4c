package pglogical

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// preconnectMaxAge is how long a connection opened by Preconnect stays
// open for a ReadInto to take; after that it is closed (a replication
// connection counts against the source's max_wal_senders even before it
// streams), and ReadInto connects on its own. A variable for tests.
var preconnectMaxAge = 30 * time.Second

// Preconnection is a replication connection being opened ahead of time by
// Preconnect. The first ReadInto of a Dialect whose Config.Preconnection
// it is takes it; it is used at most once.
type Preconnection struct {
	sourceConn string
	cancel     context.CancelFunc
	done       chan struct{} // closed once connecting ended
	conn       *pgconn.PgConn
	err        error

	mu     sync.Mutex
	closed bool // taken, closed or expired
	expiry *time.Timer
}

// Preconnect starts opening a replication connection to sourceConn in the
// background, so that connecting overlaps with what the caller does before
// the loop's first ReadInto (checks, setting up the target). Put it in
// Config.Preconnection. ReadInto waits for it and then streams over it; if
// connecting failed, or the connection was closed or expired meanwhile (it
// is closed 30 seconds after it opened), ReadInto opens its own connection
// as it does without one, so an error of the early attempt is never
// reported as such.
// Close it once the loop has stopped, or if it never starts; that is a
// no-op for a connection ReadInto took.
func Preconnect(sourceConn string) *Preconnection {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Preconnection{sourceConn: sourceConn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.conn, p.err = connectSource(ctx, sourceConn)
		if p.err == nil {
			p.mu.Lock()
			if !p.closed {
				p.expiry = time.AfterFunc(preconnectMaxAge, p.Close)
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// Close closes the connection unless a ReadInto took it, and stops an
// attempt to connect. It may be called more than once.
func (p *Preconnection) Close() {
	if p == nil || !p.claim() {
		return
	}
	p.cancel()
	<-p.done
	p.discard()
}

// claim marks p as used and reports whether it was not before.
func (p *Preconnection) claim() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.closed = true
	if p.expiry != nil {
		p.expiry.Stop()
	}
	return true
}

// discard closes the connection, if one was opened.
func (p *Preconnection) discard() {
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.conn.Close(ctx)
}

// take returns the connection for ReadInto, waiting until connecting
// ended, or nil when there is none to take: p is nil or was used, it is
// for another connection string, connecting failed or ctx ended first,
// or the server closed the connection meanwhile.
func (p *Preconnection) take(ctx context.Context, sourceConn string) *pgconn.PgConn {
	if p == nil || p.sourceConn != sourceConn || !p.claim() {
		return nil
	}
	defer p.cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cancel()
		<-p.done
		p.discard()
		return nil
	}
	if p.err != nil {
		return nil
	}
	if p.conn.IsClosed() {
		p.discard()
		return nil
	}
	return p.conn
}
