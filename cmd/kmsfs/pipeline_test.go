package main

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// runOrdered hands results over in submission order, however long each
// job takes, and returns produce's error after the last of them.
func TestRunOrdered(t *testing.T) {
	const n = 200
	var got []int
	stop := errors.New("stop")
	err := runOrdered(offlineWorkers, func(submit func(func() int)) error {
		for i := range n {
			d := time.Duration(rand.IntN(300)) * time.Microsecond
			submit(func() int { time.Sleep(d); return i })
		}
		return stop
	}, func(i int) { got = append(got, i) })
	if !errors.Is(err, stop) {
		t.Fatalf("runOrdered returned %v, want produce's error", err)
	}
	if len(got) != n {
		t.Fatalf("%d results, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("result %d is job %d's", i, v)
		}
	}
}
