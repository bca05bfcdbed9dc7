package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressEvery is how many files pass between two progress lines when
// stderr is not a terminal (a log, a pipe).
const progressEvery = 1000

// progress reports a long run over a volume's files on stderr: a bar
// when stderr is a terminal, else one plain line every progressEvery
// files. It counts stored bytes, which the walk that sized the run knew
// without reading a file. Not safe for concurrent use.
type progress struct {
	w          io.Writer
	what       string
	bar        *progressbar.ProgressBar // nil unless stderr is a terminal
	files      int
	totalFiles int
	bytes      int64
	totalBytes int64
	lastLineAt int
}

func newProgress(stderr io.Writer, what string, totalFiles int, totalBytes int64) *progress {
	p := &progress{w: stderr, what: what, totalFiles: totalFiles, totalBytes: totalBytes}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(totalBytes,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("kmsfs "+what),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetPredictTime(true),
		)
	}
	return p
}

// file counts one more file of storedBytes done.
func (p *progress) file(storedBytes int64) {
	p.files++
	p.bytes += storedBytes
	if p.bar != nil {
		p.bar.Add64(storedBytes)
		return
	}
	if p.files-p.lastLineAt >= progressEvery {
		p.lastLineAt = p.files
		fmt.Fprintf(p.w, "kmsfs %s: %d of %d files, %s of %s\n", p.what, p.files, p.totalFiles, mib(p.bytes), mib(p.totalBytes))
	}
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

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
