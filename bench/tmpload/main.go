package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

func srvCPU(ep string) (int64, int64) {
	resp, err := http.Get(ep + "/stats")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	var st struct {
		Calls map[string]int64 `json:"calls"`
		CPUNs int64            `json:"cpu_ns"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	var n int64
	for _, v := range st.Calls {
		n += v
	}
	return st.CPUNs, n
}

func cpu() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func main() {
	ep := flag.String("e", "", "")
	n := flag.Int("n", 20000, "")
	c := flag.Int("c", 128, "")
	flag.Parse()
	k, err := awskms.New(context.Background(), awskms.Config{KeyID: "arn:aws:kms:eu-west-2:111122223333:key/bbbbbbbb-0000-4000-8000-000000000001", Region: "eu-west-2", Endpoint: *ep})
	if err != nil {
		panic(err)
	}
	ec := keyring.FileContext("v", "f")
	dk, w, err := k.GenerateDataKey(context.Background(), ec)
	if err != nil {
		panic(err)
	}
	dk.Wipe()
	s0, n0 := srvCPU(*ep)
	c0 := cpu()
	t0 := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range *c {
		wg.Go(func() {
			for next.Add(1) <= int64(*n) {
				dk, err := k.Decrypt(context.Background(), w, ec)
				if err != nil {
					panic(err)
				}
				dk.Wipe()
			}
		})
	}
	wg.Wait()
	el := time.Since(t0)
	s1, n1 := srvCPU(*ep)
	fmt.Printf("%d calls in %v: %.0f/s; client %.1f µs/call; server %.1f µs/call\n", n1-n0-1, el.Round(time.Millisecond), float64(*n)/el.Seconds(), float64(cpu()-c0)/1e3/float64(*n), float64(s1-s0)/1e3/float64(n1-n0-1))
}
