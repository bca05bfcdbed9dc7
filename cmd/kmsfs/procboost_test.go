package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
)

// gateKeyring holds every call until release is closed.
type gateKeyring struct {
	entered chan struct{}
	release chan struct{}
}

func (g *gateKeyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	g.entered <- struct{}{}
	<-g.release
	return nil, nil, keyring.ErrUnreachable
}

func (g *gateKeyring) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	g.entered <- struct{}{}
	<-g.release
	return nil, keyring.ErrUnreachable
}

// TestProcBoost: GOMAXPROCS goes up when boostAt calls are in flight (not
// before), and back down once none has been for boostLinger, not while a
// later call runs.
func TestProcBoost(t *testing.T) {
	g := &gateKeyring{entered: make(chan struct{}), release: make(chan struct{})}
	b := newProcBoost(g, 1, 2)
	var mu sync.Mutex
	var sets []int
	setDone := make(chan int, 16)
	b.set = func(n int) int {
		mu.Lock()
		sets = append(sets, n)
		mu.Unlock()
		setDone <- n
		return 0
	}
	setsNow := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sets...)
	}
	call := func(wg *sync.WaitGroup) {
		wg.Go(func() { b.Decrypt(context.Background(), nil, nil) })
		<-g.entered
	}

	var wg sync.WaitGroup
	for range boostAt - 1 {
		call(&wg)
	}
	if s := setsNow(); len(s) != 0 {
		t.Fatalf("%d calls in flight changed GOMAXPROCS: %v", boostAt-1, s)
	}
	call(&wg)
	if n := <-setDone; n != 2 {
		t.Fatalf("%d calls in flight set GOMAXPROCS to %d, want 2", boostAt, n)
	}
	close(g.release)
	wg.Wait()

	// A call within the linger keeps the CPUs; after it, they go back.
	g.release = make(chan struct{})
	var wg2 sync.WaitGroup
	call(&wg2)
	time.Sleep(boostLinger + 50*time.Millisecond)
	if s := setsNow(); len(s) != 1 {
		t.Fatalf("GOMAXPROCS changed while a call was in flight: %v", s)
	}
	close(g.release)
	wg2.Wait()
	select {
	case n := <-setDone:
		if n != 1 {
			t.Fatalf("after the burst GOMAXPROCS was set to %d, want 1", n)
		}
	case <-time.After(10 * boostLinger):
		t.Fatal("GOMAXPROCS was not lowered after the burst")
	}
	if s := setsNow(); len(s) != 2 {
		t.Fatalf("GOMAXPROCS changes: %v, want [2 1]", s)
	}
}
