package main

import (
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// proxy forwards TCP connections to a server and can fail the way
// networks and servers do: cut every connection, refuse new ones, or
// stall (stop forwarding in both directions without closing anything, as
// a path that silently drops packets).
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	refusing bool
	flowing  chan struct{} // closed while traffic flows
	wg       sync.WaitGroup
}

// newProxy listens on a free loopback port and forwards to the host and
// port of serverURL.
func newProxy(t *testing.T, serverURL string) *proxy {
	t.Helper()
	u, err := url.Parse(serverURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{t: t, ln: ln, target: u.Host, conns: make(map[net.Conn]struct{}), flowing: make(chan struct{})}
	close(p.flowing)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.stall(false)
		p.cut()
		p.wg.Wait()
	})
	return p
}

// url returns serverURL with its host replaced by the proxy.
func (p *proxy) url(serverURL string) string {
	u, err := url.Parse(serverURL)
	require.NoError(p.t, err)
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refusing := p.refusing
		p.mu.Unlock()
		if refusing {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns[client], p.conns[server] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

// pipe copies from src to dst, holding each chunk while the proxy
// stalls, and closes both when either side ends.
func (p *proxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer p.forget(src, dst)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			flowing := p.flowing
			p.mu.Unlock()
			<-flowing
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: both sides go
		}
	}
}

func (p *proxy) forget(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// cut closes every open connection.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.forget(conns...)
}

// refuse makes the proxy close new connections at once (on) or accept
// them again; turning it on also cuts the open ones, like a server that
// went down.
func (p *proxy) refuse(on bool) {
	p.mu.Lock()
	p.refusing = on
	p.mu.Unlock()
	if on {
		p.cut()
	}
}

// stall stops (on) or resumes forwarding; connections stay open.
func (p *proxy) stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
		if on {
			p.flowing = make(chan struct{})
		}
	default:
		if !on {
			close(p.flowing)
		}
	}
}
