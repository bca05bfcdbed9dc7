package main

import "sync"

// offlineWorkers is how many files an offline command works on at once:
// enough to overlap key service round trips (each file of a per-file
// volume costs one) and to use every core for decryption.
const offlineWorkers = 8

// runOrdered runs the jobs produce submits on up to workers goroutines,
// and calls consume with their results one at a time, in the order they
// were submitted. produce's error is returned once everything submitted
// has been consumed. At most a few times workers jobs are pending at
// once, so each may hold an open file.
func runOrdered[T any](workers int, produce func(submit func(job func() T)) error, consume func(T)) error {
	type task struct {
		job func() T
		out chan T
	}
	work := make(chan task, workers)
	order := make(chan chan T, 2*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				t.out <- t.job()
			}
		}()
	}
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for out := range order {
			consume(<-out)
		}
	}()
	err := produce(func(job func() T) {
		out := make(chan T, 1)
		order <- out
		work <- task{job, out}
	})
	close(work)
	close(order)
	wg.Wait()
	<-consumed
	return err
}
