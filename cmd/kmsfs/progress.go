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

// progressEvery is how many files pass between two progress lines when
// stderr is not a terminal (a log, a pipe).
const progressEvery = 1000

// progress reports a long run over a volume's files on stderr: a bar
// (schollz/progressbar) when stderr is a terminal, else one plain line
// every progressEvery files. With a byte total it counts stored bytes,
// which the walk that sized the run knew without reading a file;
// without, files. Safe for concurrent use.
type progress struct {
	w          io.Writer
	what       string
	bar        *progressbar.ProgressBar // nil unless stderr is a terminal
	start      time.Time
	totalFiles int
	totalBytes int64 // 0: count files

	mu         sync.Mutex
	files      int   // guarded by mu
	bytes      int64 // guarded by mu
	lastLineAt int   // guarded by mu
}

func newProgress(stderr io.Writer, what string, totalFiles int, totalBytes int64) *progress {
	p := &progress{w: stderr, what: what, start: time.Now(), totalFiles: totalFiles, totalBytes: totalBytes}
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return p
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription("kmsfs " + what),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(true),
	}
	if totalBytes > 0 {
		p.bar = progressbar.NewOptions64(totalBytes, append(opts, progressbar.OptionShowBytes(true))...)
	} else {
		p.bar = progressbar.NewOptions(totalFiles, append(opts, progressbar.OptionShowCount(),
			progressbar.OptionShowIts(), progressbar.OptionSetItsString("files"))...)
	}
	return p
}

// file counts one more file, of storedBytes, done.
func (p *progress) file(storedBytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.files++
	p.bytes += storedBytes
	if p.bar != nil {
		if p.totalBytes > 0 {
			p.bar.Add64(storedBytes)
		} else {
			p.bar.Add(1)
		}
		return
	}
	if p.files-p.lastLineAt >= progressEvery {
		p.lastLineAt = p.files
		p.line()
	}
}

// line prints where the run is; the caller holds mu.
func (p *progress) line() {
	rate := float64(p.files) / max(time.Since(p.start).Seconds(), 1e-9)
	left := time.Duration(float64(p.totalFiles-p.files) / max(rate, 1e-9) * float64(time.Second)).Round(time.Second)
	if p.totalBytes > 0 {
		fmt.Fprintf(p.w, "kmsfs %s: %d of %d files, %s of %s, %v left\n", p.what, p.files, p.totalFiles, humanBytes(p.bytes), humanBytes(p.totalBytes), left)
		return
	}
	fmt.Fprintf(p.w, "kmsfs %s: %d of %d files, %.0f files/s, %v left\n", p.what, p.files, p.totalFiles, rate, left)
}

// clear takes the bar off the terminal before a line is printed there.
func (p *progress) clear() {
	if p.bar != nil {
		p.bar.Clear()
	}
}

// done removes the bar.
func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// humanBytes gives a size for a person: bytes below 1 KiB, then KiB, MiB or GiB
// with one decimal, so that a small volume does not read "0.0 MiB".
func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}
