// Package stopper provides a context that stops in two steps: first a
// graceful signal (Stopping), then, after a grace period, cancellation.
package stopper

import (
	"context"
	"sync"
	"time"
)

// Context is a context.Context with a graceful stop. Stops propagate from a
// Context to the children made with Child.
type Context struct {
	context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	stopping chan struct{}
	deadline time.Time // when cancellation is due, once stopping
	timer    *time.Timer
	children map[*Context]struct{}
	parent   *Context
	unhook   func() bool
}

// New returns a Context that is cancelled with parent.
func New(parent context.Context) *Context {
	ctx, cancel := context.WithCancel(parent)
	return &Context{Context: ctx, cancel: cancel, stopping: make(chan struct{})}
}

// Child returns a Context that stops when c stops (with what remains of c's
// grace period) and is cancelled when c is cancelled or when also is done.
// The child must be Released when it is no longer used.
//
// With also set, the child derives from also, so that also's cancellation
// (a lost lease) has cancelled the child by the time it returns: no work
// under the child can start after that. c's cancellation reaches the child
// through context.AfterFunc, a moment later.
func (c *Context) Child(also context.Context) *Context {
	var child *Context
	if also == nil {
		child = New(c.Context)
	} else {
		child = New(also)
		child.unhook = context.AfterFunc(c.Context, child.cancel)
	}
	child.parent = c
	c.mu.Lock()
	if c.children == nil {
		c.children = make(map[*Context]struct{})
	}
	c.children[child] = struct{}{}
	stopped, deadline := c.isStoppingLocked(), c.deadline
	c.mu.Unlock()
	if stopped {
		child.Stop(time.Until(deadline))
	}
	return child
}

// Stopping is closed once Stop has been called (here or on an ancestor).
func (c *Context) Stopping() <-chan struct{} { return c.stopping }

// IsStopping reports whether Stopping is closed.
func (c *Context) IsStopping() bool {
	select {
	case <-c.stopping:
		return true
	default:
		return false
	}
}

func (c *Context) isStoppingLocked() bool {
	select {
	case <-c.stopping:
		return true
	default:
		return false
	}
}

// Stop closes Stopping and cancels the context once grace has passed; a
// grace of zero or less cancels at once. It returns at once. Calling it
// again can only bring cancellation forward.
func (c *Context) Stop(grace time.Duration) {
	if grace <= 0 {
		grace = 0
	}
	deadline := time.Now().Add(grace)
	c.mu.Lock()
	first := !c.isStoppingLocked()
	if first {
		close(c.stopping)
	}
	if first || deadline.Before(c.deadline) {
		c.deadline = deadline
		if c.timer != nil {
			c.timer.Stop()
		}
		if grace == 0 {
			c.timer = nil
			c.mu.Unlock()
			c.cancel()
			c.mu.Lock()
		} else {
			c.timer = time.AfterFunc(grace, c.cancel)
		}
	}
	children := make([]*Context, 0, len(c.children))
	for child := range c.children {
		children = append(children, child)
	}
	c.mu.Unlock()
	for _, child := range children {
		child.Stop(grace)
	}
}

// Cancel cancels the context at once, without closing Stopping.
func (c *Context) Cancel() { c.cancel() }

// Release cancels the context and frees what it holds: its grace timer and
// its place in its parent. Call it when the work under c has ended.
func (c *Context) Release() {
	c.cancel()
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.mu.Unlock()
	if c.unhook != nil {
		c.unhook()
	}
	if p := c.parent; p != nil {
		p.mu.Lock()
		delete(p.children, c)
		p.mu.Unlock()
	}
}
