package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestFuzzParsers runs the fuzzers of every parser of on-disk bytes for a
// bounded time: KMSFS_FUZZTIME each (.ci/run sets 30s), 5s by default. The
// corpora live in each package's testdata/fuzz; a failure there stays as a
// new corpus file that the package's ordinary tests then replay.
func TestFuzzParsers(t *testing.T) {
	fuzztime := os.Getenv("KMSFS_FUZZTIME")
	if fuzztime == "" {
		fuzztime = "5s"
	}
	if _, err := time.ParseDuration(fuzztime); err != nil {
		t.Fatalf("KMSFS_FUZZTIME=%q: %v", fuzztime, err)
	}
	for _, target := range []struct{ pkg, name string }{
		{"../blockcipher", "FuzzParseHeader"},
		{"../blockcipher", "FuzzOpenBlock"},
		{"../fs", "FuzzParseConfig"},
	} {
		t.Run(target.name, func(t *testing.T) {
			var out []byte
			var err error
			for attempt := 1; attempt <= 2; attempt++ {
				cmd := exec.Command("go", "test", "-run", "^$", "-fuzz", "^"+target.name+"$", "-fuzztime", fuzztime, "-parallel", "1", target.pkg)
				out, err = cmd.CombinedOutput()
				if err == nil || strings.Contains(string(out), "Failing input written to") {
					break
				}
				// No failing input: the fuzzing engine itself gave up
				// (a worker that did not answer in time on a loaded
				// machine). Once more before calling it a failure.
				t.Logf("%s: the fuzzer stopped without a failing input (%v); trying again", target.name, err)
			}
			if err != nil {
				t.Fatalf("%s: %v\n%s", target.name, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			for _, l := range lines {
				if strings.Contains(l, "execs:") {
					t.Log(strings.TrimSpace(l))
				}
			}
		})
	}
}
