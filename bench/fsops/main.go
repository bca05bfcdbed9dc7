// Command fsops runs the small-file workloads of the benchmark inside one
// process, so that process creation does not dominate what is measured.
//
//	fsops create DIR N SIZE      create N files of SIZE bytes
//	fsops read DIR PARALLEL      list DIR, then read every file once with
//	                             PARALLEL readers (1: serially, as a
//	                             backup tool does)
//
// It prints the elapsed seconds.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: fsops create DIR N SIZE | fsops read DIR PARALLEL")
		os.Exit(2)
	}
	dir := os.Args[2]
	start := time.Now()
	switch os.Args[1] {
	case "create":
		n, _ := strconv.Atoi(os.Args[3])
		size, _ := strconv.Atoi(os.Args[4])
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fail(err)
		}
		for i := 0; i < n; i++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%06d", i)), data, 0o644); err != nil {
				fail(err)
			}
		}
	case "read":
		par, _ := strconv.Atoi(os.Args[3])
		ents, err := os.ReadDir(dir)
		if err != nil {
			fail(err)
		}
		work := make(chan string, len(ents))
		for _, e := range ents {
			work <- filepath.Join(dir, e.Name())
		}
		close(work)
		var wg sync.WaitGroup
		buf := make([][]byte, par)
		for w := 0; w < par; w++ {
			buf[w] = make([]byte, 128<<10)
			wg.Go(func() {
				for p := range work {
					f, err := os.Open(p)
					if err != nil {
						fail(err)
					}
					for {
						_, err := f.Read(buf[w])
						if err == io.EOF {
							break
						}
						if err != nil {
							fail(err)
						}
					}
					f.Close()
				}
			})
		}
		wg.Wait()
	default:
		fmt.Fprintln(os.Stderr, "fsops: unknown workload", os.Args[1])
		os.Exit(2)
	}
	fmt.Printf("%.4f\n", time.Since(start).Seconds())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fsops:", err)
	os.Exit(1)
}
