package notify

import (
	"sync"
	"testing"
	"time"
)

func TestVarWakesWaitersOnSet(t *testing.T) {
	var v Var[int]
	val, changed := v.Get()
	if val != 0 {
		t.Fatalf("zero Var holds %d", val)
	}
	select {
	case <-changed:
		t.Fatal("channel closed before any Set")
	default:
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-changed
		}()
	}
	v.Set(7)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("waiters were not woken by Set")
	}
	val, next := v.Get()
	if val != 7 {
		t.Fatalf("Get after Set(7) = %d", val)
	}
	if next == changed {
		t.Fatal("Get after Set returned the closed channel again")
	}
	if v.Peek() != 7 {
		t.Fatalf("Peek = %d", v.Peek())
	}
}

func TestVarSetWithoutWaitersKeepsValue(t *testing.T) {
	var v Var[string]
	v.Set("a")
	v.Set("b")
	if got, _ := v.Get(); got != "b" {
		t.Fatalf("Get = %q, want b", got)
	}
}
