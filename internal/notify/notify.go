// Package notify holds a value together with a channel that is closed each
// time the value changes.
package notify

import "sync"

// Var is a value whose changes can be waited for. The zero value holds the
// zero T and is ready to use.
type Var[T any] struct {
	mu      sync.Mutex
	value   T
	changed chan struct{}
}

// Get returns the value and a channel that is closed when it next changes.
func (v *Var[T]) Get() (T, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.changed == nil {
		v.changed = make(chan struct{})
	}
	return v.value, v.changed
}

// Peek returns the value alone, without allocating a channel.
func (v *Var[T]) Peek() T {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.value
}

// Set replaces the value and wakes everyone waiting on an earlier Get.
func (v *Var[T]) Set(value T) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.value = value
	if v.changed != nil {
		close(v.changed)
		// A new channel is made lazily by the next Get, so a Set nobody
		// waits for costs no allocation.
		v.changed = nil
	}
}
