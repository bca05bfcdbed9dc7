package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows a long run's progress on stderr: a bar with files,
// files/s and the time left on a terminal (schollz/progressbar), else a
// plain line every progressEvery files and at the end, for logs.
type progress struct {
	bar   *progressbar.ProgressBar // nil: plain lines
	w     io.Writer
	total int
	start time.Time

	mu   sync.Mutex
	done int // guarded by mu
}

const progressEvery = 1000

func newProgress(stderr io.Writer, total int) *progress {
	p := &progress{w: stderr, total: total, start: time.Now()}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("rewrap"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("files"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// add counts one file done. Safe for concurrent use.
func (p *progress) add() {
	if p.bar != nil {
		p.bar.Add(1)
		return
	}
	p.mu.Lock()
	p.done++
	n := p.done
	p.mu.Unlock()
	if n%progressEvery == 0 && n < p.total {
		p.line(n)
	}
}

func (p *progress) line(n int) {
	elapsed := time.Since(p.start).Seconds()
	rate := float64(n) / max(elapsed, 1e-9)
	eta := time.Duration(float64(p.total-n) / max(rate, 1e-9) * float64(time.Second)).Round(time.Second)
	fmt.Fprintf(p.w, "kmsfs rewrap: %d/%d files, %.0f files/s, %v left\n", n, p.total, rate, eta)
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
		return
	}
	if p.total >= progressEvery {
		p.line(p.total)
	}
}
