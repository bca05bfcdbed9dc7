package tests

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/awskms"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// KMS faults while mounted. Every case gets its own local-kms, proxy,
// volume and mount, so the cases run in parallel and each mount's retry
// quota and log belong to one case.

// faultBound is how long a failing KMS call may keep an open or a create
// waiting: the aws-kms keyring bounds each call, retries included, by its
// CallTimeout (awskms.DefaultCallTimeout, 10 s, over
// DefaultKMSMaxAttempts = 3 attempts), plus slack for a loaded machine.
const faultBound = awskms.DefaultCallTimeout + 5*time.Second

// promptBound is how fast a metadata operation must answer while a KMS
// call hangs: it needs no key, so it must not wait for one. It answers in
// milliseconds; one that waited would wait for the hung call, which ends
// only with the keyring's 10 s budget. Half that budget is the bound:
// generous for a loaded 2-core machine running the suite in parallel,
// and still short of the wait it must catch.
const promptBound = awskms.DefaultCallTimeout / 2

// warnLinesFor returns the WARN and ERROR lines of the mount's log that name
// path (as the path attribute).
func warnLinesFor(m *mount, path string) []string {
	re := regexp.MustCompile(`(?:^| )path=` + regexp.QuoteMeta(path) + `(?: |$)`)
	var out []string
	for _, l := range warnLine.FindAllString(m.log.String(), -1) {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// expectOneWarn checks that the log has exactly one warning naming path,
// and that it contains each of reasons.
func expectOneWarn(t testing.TB, m *mount, path string, reasons ...string) {
	t.Helper()
	flushMountLog(t, m)
	w := warnLinesFor(m, path)
	if len(w) != 1 {
		t.Errorf("%d WARN lines name %s, want 1:\n%s", len(w), path, strings.Join(w, "\n"))
		return
	}
	for _, r := range reasons {
		if !strings.Contains(w[0], r) {
			t.Errorf("the WARN line for %s does not say %q:\n%s", path, r, w[0])
		}
	}
}

// expectWarnsAfterExit unmounts m, so its log is complete, and checks that
// it holds exactly want[path] WARN lines naming each path and no others.
func expectWarnsAfterExit(t testing.TB, m *mount, want map[string]int) {
	t.Helper()
	m.checkFDs()
	if err := m.unmount(); err != nil {
		t.Errorf("unmount: %v", err)
	}
	total := 0
	for path, n := range want {
		total += n
		if w := warnLinesFor(m, path); len(w) != n {
			t.Errorf("after unmount: %d WARN lines name %s, want %d:\n%s", len(w), path, n, strings.Join(w, "\n"))
		}
	}
	if w := warnLine.FindAllString(m.log.String(), -1); len(w) != total {
		t.Errorf("after unmount: %d WARN lines in all, want %d:\n%s", len(w), total, strings.Join(w, "\n"))
	}
}

// runBounded runs f and returns how long it took and its error. If f does not
// return within twice faultBound it has hung: runBounded fails t at once
// (call it from the test's goroutine).
func runBounded(t testing.TB, what string, f func() error) (time.Duration, error) {
	t.Helper()
	type result struct {
		d   time.Duration
		err error
	}
	ch := make(chan result, 1)
	start := time.Now()
	go func() {
		err := f()
		ch <- result{time.Since(start), err}
	}()
	select {
	case r := <-ch:
		return r.d, r.err
	case <-time.After(2 * faultBound):
		t.Fatalf("%s did not return within %v", what, 2*faultBound)
		return 0, nil
	}
}

func TestFaultKMSErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		fault    kmstest.Fault
		errno    syscall.Errno
		attempts int    // requests the failing call makes (retries included)
		reason   string // in the WARN line
		detail   string // in the WARN line too
	}{
		{"AccessDenied on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "AccessDeniedException"},
			syscall.EACCES, 1, keyring.ErrAccessDenied.Error(), "AccessDeniedException"},
		{"Disabled on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "DisabledException"},
			syscall.EACCES, 1, keyring.ErrKeyDisabled.Error(), "DisabledException"},
		{"KMSInvalidState on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "KMSInvalidStateException"},
			syscall.EACCES, 1, keyring.ErrKeyDisabled.Error(), "KMSInvalidStateException"},
		{"NotFound on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "NotFoundException"},
			syscall.EACCES, 1, keyring.ErrKeyNotFound.Error(), "NotFoundException"},
		{"InvalidCiphertext on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "InvalidCiphertextException"},
			syscall.EIO, 1, keyring.ErrInvalidCiphertext.Error(), "InvalidCiphertextException"},
		{"Throttling on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "ThrottlingException"},
			syscall.EIO, awskms.DefaultMaxAttempts, keyring.ErrThrottled.Error(), "ThrottlingException"},
		{"KMSInternal 500 on Decrypt", kmstest.Fault{Op: "Decrypt", ErrorCode: "KMSInternalException", Status: 500},
			syscall.EIO, awskms.DefaultMaxAttempts, keyring.ErrUnreachable.Error(), "KMSInternalException"},
		{"HTTP 503 on Decrypt", kmstest.Fault{Op: "Decrypt", Status: 503},
			syscall.EIO, awskms.DefaultMaxAttempts, keyring.ErrUnreachable.Error(), "503"},
		{"dropped connections on Decrypt", kmstest.Fault{Op: "Decrypt", Drop: true},
			syscall.EIO, awskms.DefaultMaxAttempts, keyring.ErrUnreachable.Error(), ""},
		{"AccessDenied on GenerateDataKey", kmstest.Fault{Op: "GenerateDataKey", ErrorCode: "AccessDeniedException"},
			syscall.EACCES, 1, keyring.ErrAccessDenied.Error(), "AccessDeniedException"},
		{"HTTP 503 on GenerateDataKey", kmstest.Fault{Op: "GenerateDataKey", Status: 503},
			syscall.EIO, awskms.DefaultMaxAttempts, keyring.ErrUnreachable.Error(), "503"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			env := newKMSEnv(t)
			k := env.mount(t, "--key-pool", "0")
			k.AllowWarnings = true
			data := patterned(1, 3*4096+7)
			writeFile(t, k.path("victim"), data)
			k.idle(t)

			env.proxy.SetFault(tc.fault)
			env.proxy.Reset()
			op, path := tc.fault.Op, "victim"
			d, err := runBounded(t, "open", func() error {
				if op == "GenerateDataKey" {
					path = "created"
					return os.WriteFile(k.path(path), data, 0o644)
				}
				f, err := os.Open(k.path(path))
				if err == nil {
					f.Close()
				}
				return err
			})
			t.Logf("%s: %v after %v, %d %s requests", tc.name, err, d, env.proxy.Count(op), op)
			if errnoFrom(err) != tc.errno {
				t.Errorf("%s with %s: %v, want %v", map[bool]string{true: "create", false: "open"}[op == "GenerateDataKey"], tc.name, err, tc.errno)
			}
			if d >= faultBound {
				t.Errorf("the failure took %v, not under %v", d, faultBound)
			}
			if n := env.proxy.Count(op); n != tc.attempts {
				t.Errorf("%d %s requests, want %d", n, op, tc.attempts)
			}
			var reasons []string
			if tc.detail != "" {
				reasons = append(reasons, tc.detail)
			}
			expectOneWarn(t, k.mount, path, append(reasons, tc.reason)...)

			// Healed, the same mount works again: no remount, no stuck state.
			env.proxy.Heal()
			if op == "GenerateDataKey" {
				writeFile(t, k.path(path), data)
			}
			if got := readFile(t, k.path(path)); !bytes.Equal(got, data) {
				t.Errorf("after Heal: %s reads back different bytes", path)
			}
			expectWarnsAfterExit(t, k.mount, map[string]int{path: 1})
		})
	}
}

// TestFaultDisabledKey disables the volume's key in local-kms itself: new
// opens and creates fail with EACCES, open files go on, and enabling the
// key again needs no remount.
func TestFaultDisabledKey(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	k.AllowWarnings = true
	a, b := patterned(1, 10000), patterned(2, 5000)
	writeFile(t, k.path("open-before"), a)
	writeFile(t, k.path("victim"), b)
	k.idle(t)
	held, err := os.OpenFile(k.path("open-before"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	env.srv.DisableKey(t, kmstest.KeyAID)
	env.proxy.Reset()
	d, err := runBounded(t, "open", func() error { _, err := os.ReadFile(k.path("victim")); return err })
	t.Logf("open with the key disabled: %v after %v", err, d)
	if errnoFrom(err) != syscall.EACCES {
		t.Errorf("open with the key disabled: %v, want EACCES", err)
	}
	expectOneWarn(t, k.mount, "victim", keyring.ErrKeyDisabled.Error(), "DisabledException")
	if err := os.WriteFile(k.path("new"), b, 0o644); errnoFrom(err) != syscall.EACCES {
		t.Errorf("create with the key disabled: %v, want EACCES", err)
	}
	expectOneWarn(t, k.mount, "new", keyring.ErrKeyDisabled.Error())
	if n := env.proxy.Count("Decrypt"); n != 1 {
		t.Errorf("%d Decrypt requests for a disabled key, want 1 (not retried)", n)
	}
	// The open file keeps its key.
	if _, err := held.WriteAt([]byte("still writable"), 5000); err != nil {
		t.Errorf("write to a file opened before the key was disabled: %v", err)
	}
	buf := make([]byte, 14)
	if _, err := held.ReadAt(buf, 5000); err != nil || string(buf) != "still writable" {
		t.Errorf("read back: %q, %v", buf, err)
	}

	env.srv.EnableKey(t, kmstest.KeyAID)
	if got := readFile(t, k.path("victim")); !bytes.Equal(got, b) {
		t.Error("victim reads back different bytes after EnableKey")
	}
	writeFile(t, k.path("new"), b)
	if got := readFile(t, k.path("new")); !bytes.Equal(got, b) {
		t.Error("new file reads back different bytes")
	}

	// A key pending deletion is refused the same way.
	k.waitLiveKeys(t, 1) // only held's: victim's key was wiped
	env.srv.ScheduleDeletion(t, kmstest.KeyAID)
	if _, err := os.ReadFile(k.path("victim")); errnoFrom(err) != syscall.EACCES {
		t.Errorf("open with the key pending deletion: %v, want EACCES", err)
	}
	flushMountLog(t, k.mount)
	if w := warnLinesFor(k.mount, "victim"); len(w) != 2 || !strings.Contains(w[1], "KMSInvalidStateException") || !strings.Contains(w[1], keyring.ErrKeyDisabled.Error()) {
		t.Errorf("want a second WARN line for victim naming KMSInvalidStateException, got:\n%s", strings.Join(w, "\n"))
	}
	held.Close()
	expectWarnsAfterExit(t, k.mount, map[string]int{"victim": 2, "new": 1})
}

// TestFaultConcurrentOpensShareFailure: first opens of one file that
// overlap share one Decrypt, and its failure: every open fails with the
// mapped errno, KMS is asked once, and the failure is logged once for the
// file (the same failure again is not a new line: fs/errno.go).
func TestFaultConcurrentOpensShareFailure(t *testing.T) {
	t.Parallel()
	const g = 8
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	k.AllowWarnings = true
	writeFile(t, k.path("victim"), patterned(1, 100))
	k.idle(t)
	env.proxy.SetFault(kmstest.Fault{Op: "Decrypt", Latency: 500 * time.Millisecond, ErrorCode: "AccessDeniedException"})
	env.proxy.Reset()
	errs := make([]error, g)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range g {
		wg.Go(func() {
			<-start
			f, err := os.Open(k.path("victim"))
			if err == nil {
				f.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if errnoFrom(err) != syscall.EACCES {
			t.Errorf("open %d: %v, want EACCES", i, err)
		}
	}
	if n := env.proxy.Count("Decrypt"); n != 1 {
		t.Errorf("%d overlapping first opens made %d Decrypt requests, want 1", g, n)
	}
	env.proxy.Heal()
	if got := readFile(t, k.path("victim")); !bytes.Equal(got, patterned(1, 100)) {
		t.Error("after Heal: different bytes")
	}
	expectWarnsAfterExit(t, k.mount, map[string]int{"victim": 1})
}

// TestFaultOutage takes KMS away entirely (every connection closed), and
// separately black-holes it (requests never answered): opens and creates
// fail with EIO within the keyring's bound, metadata operations and files
// opened before keep working, and after Heal everything works again.
func TestFaultOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault kmstest.Fault
	}{
		{"outage", kmstest.Fault{Outage: true}},
		{"blackhole", kmstest.Fault{Blackhole: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newKMSEnv(t)
			k := env.mount(t, "--key-pool", "0")
			k.AllowWarnings = true
			for _, d := range []string{"dir", "other"} {
				if err := os.Mkdir(k.path(d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			held, unopened := patterned(1, 3*4096+10), patterned(2, 9000)
			writeFile(t, k.path("dir/held"), held)
			writeFile(t, k.path("dir/unopened"), unopened)
			k.idle(t)
			f, err := os.OpenFile(k.path("dir/held"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()

			env.proxy.SetFault(tc.fault)
			env.proxy.Reset()

			// An open and a create whose KMS calls cannot complete, in
			// the background. The create is in another directory: the
			// kernel holds its directory locked for the whole CREATE
			// (TestFaultCreateStallsItsDirectory).
			type result struct {
				d   time.Duration
				err error
			}
			openRes, createRes := make(chan result, 1), make(chan result, 1)
			t0 := time.Now()
			go func() {
				_, err := os.ReadFile(k.path("dir/unopened"))
				openRes <- result{time.Since(t0), err}
			}()
			go func() {
				err := os.WriteFile(k.path("other/created"), unopened, 0o644)
				createRes <- result{time.Since(t0), err}
			}()
			if tc.fault.Blackhole {
				pollUntil(t, 5*time.Second, "the KMS calls to reach the black hole", func() bool {
					return env.proxy.Count("Decrypt") > 0 && env.proxy.Count("GenerateDataKey") > 0
				})
			}

			// Meanwhile: metadata answers promptly, the open file reads
			// and writes, a second handle of it opens without KMS.
			for i := range 3 {
				d, err := runBounded(t, "stat", func() error {
					st, err := os.Stat(k.path("dir/unopened"))
					if err == nil && st.Size() != int64(len(unopened)) {
						err = fmt.Errorf("size %d", st.Size())
					}
					return err
				})
				if err != nil || d > promptBound {
					t.Errorf("stat %d during the %s: %v after %v (want < %v)", i, tc.name, err, d, promptBound)
				}
				d, err = runBounded(t, "readdir", func() error {
					ents, err := os.ReadDir(k.path("dir"))
					if err == nil && len(ents) != 2 {
						err = fmt.Errorf("%d entries", len(ents))
					}
					return err
				})
				if err != nil || d > promptBound {
					t.Errorf("readdir %d during the %s: %v after %v (want < %v)", i, tc.name, err, d, promptBound)
				}
			}
			buf := make([]byte, 4096)
			if _, err := f.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, held[4096:8192]) {
				t.Errorf("read of a file opened before the %s: %v", tc.name, err)
			}
			patch := []byte("written during the outage")
			copy(held[5000:], patch)
			if _, err := f.WriteAt(patch, 5000); err != nil {
				t.Errorf("write to a file opened before the %s: %v", tc.name, err)
			}
			// Past the end too: new blocks, a hole, the old final block
			// re-sealed.
			tail := []byte("appended during the outage")
			if _, err := f.WriteAt(tail, int64(len(held))+5000); err != nil {
				t.Errorf("extending a file opened before the %s: %v", tc.name, err)
			}
			held = append(append(held, make([]byte, 5000)...), tail...)
			if err := f.Sync(); err != nil {
				t.Errorf("fsync: %v", err)
			}
			if got := readFile(t, k.path("dir/held")); !bytes.Equal(got, held) {
				t.Errorf("a second open of the held file during the %s read different bytes", tc.name)
			}

			var r result
			select {
			case r = <-openRes:
			case <-time.After(2 * faultBound):
				t.Fatalf("open during the %s did not return within %v", tc.name, 2*faultBound)
			}
			t.Logf("open during the %s: %v after %v, %d Decrypt requests reached the proxy", tc.name, r.err, r.d, env.proxy.Count("Decrypt"))
			if errnoFrom(r.err) != syscall.EIO || r.d >= faultBound {
				t.Errorf("open during the %s: %v after %v, want EIO in under %v", tc.name, r.err, r.d, faultBound)
			}
			expectOneWarn(t, k.mount, "dir/unopened", keyring.ErrUnreachable.Error())
			select {
			case r = <-createRes:
			case <-time.After(2 * faultBound):
				t.Fatalf("create during the %s did not return within %v", tc.name, 2*faultBound)
			}
			t.Logf("create during the %s: %v after %v, %d GenerateDataKey requests reached the proxy", tc.name, r.err, r.d, env.proxy.Count("GenerateDataKey"))
			if errnoFrom(r.err) != syscall.EIO || r.d >= faultBound {
				t.Errorf("create during the %s: %v after %v, want EIO in under %v", tc.name, r.err, r.d, faultBound)
			}
			expectOneWarn(t, k.mount, "other/created", keyring.ErrUnreachable.Error())

			env.proxy.Heal()
			env.proxy.Reset()
			if got := readFile(t, k.path("dir/unopened")); !bytes.Equal(got, unopened) {
				t.Error("after Heal: unopened reads back different bytes")
			}
			writeFile(t, k.path("other/created"), unopened)
			k.waitLiveKeys(t, 1) // held's only: the new file's key was wiped
			if got := readFile(t, k.path("other/created")); !bytes.Equal(got, unopened) {
				t.Error("after Heal: created reads back different bytes")
			}
			if g, d := env.proxy.Count("GenerateDataKey"), env.proxy.Count("Decrypt"); g != 1 || d != 2 {
				t.Errorf("after Heal: %d GenerateDataKey, %d Decrypt; want 1 and 2", g, d)
			}
			f.Close()
			if got := readFile(t, k.path("dir/held")); !bytes.Equal(got, held) {
				t.Error("after Heal: held reads back different bytes")
			}
			expectWarnsAfterExit(t, k.mount, map[string]int{"dir/unopened": 1, "other/created": 1})
		})
	}
}

// TestFaultCreateStallsItsDirectory: a create whose GenerateDataKey hangs
// (empty key pool, KMS black-holed) must not stall the other operations of
// its directory, which need no key. Today it does, for the keyring's whole
// call budget: see the report on this test.
func TestFaultCreateStallsItsDirectory(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	k.AllowWarnings = true
	if err := os.Mkdir(k.path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, k.path("dir/existing"), patterned(1, 100))
	k.idle(t)
	env.proxy.SetFault(kmstest.Fault{Op: "GenerateDataKey", Blackhole: true})
	env.proxy.Reset()
	createRes := make(chan error, 1)
	go func() { createRes <- os.WriteFile(k.path("dir/new"), patterned(2, 100), 0o644) }()
	pollUntil(t, 5*time.Second, "the create's GenerateDataKey to reach the black hole", func() bool {
		return env.proxy.Count("GenerateDataKey") > 0
	})
	ops := []struct {
		name string
		f    func() error
	}{
		{"readdir of the directory", func() error { _, err := os.ReadDir(k.path("dir")); return err }},
		{"lookup of a new name in it", func() error {
			if _, err := os.Lstat(k.path("dir/absent")); !os.IsNotExist(err) {
				return fmt.Errorf("lstat: %v, want ENOENT", err)
			}
			return nil
		}},
		{"mkdir in it", func() error { return os.Mkdir(k.path("dir/sub"), 0o755) }},
		{"stat of a cached name in it", func() error { _, err := os.Stat(k.path("dir/existing")); return err }},
	}
	// All at once, so each meets the pending create.
	durs, errs := make([]time.Duration, len(ops)), make([]error, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Go(func() {
			start := time.Now()
			errs[i] = op.f()
			durs[i] = time.Since(start)
		})
	}
	if _, err := runBounded(t, "the directory operations", func() error { wg.Wait(); return nil }); err != nil {
		t.Fatal(err)
	}
	for i, op := range ops {
		t.Logf("%s while a create in it waits for GenerateDataKey: %v after %v", op.name, errs[i], durs[i])
		if errs[i] != nil || durs[i] > promptBound {
			t.Errorf("%s while a create in it waits for GenerateDataKey: %v after %v, want < %v", op.name, errs[i], durs[i], promptBound)
		}
	}
	select {
	case err := <-createRes:
		if errnoFrom(err) != syscall.EIO {
			t.Errorf("create with GenerateDataKey black-holed: %v, want EIO", err)
		}
	case <-time.After(2 * faultBound):
		t.Fatalf("the create did not return within %v", 2*faultBound)
	}
	env.proxy.Heal()
}

// TestFaultOutageReadBack: a file written while KMS is unreachable (its
// key from the pool, made before) reads back through the same mount: its
// key is kept past the close while the outage lasts, and wiped once a
// KMS call succeeds again. A file closed before the outage still needs
// KMS to open, as always.
func TestFaultOutageReadBack(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "4")
	k.AllowWarnings = true
	writeFile(t, k.path("before"), patterned(1, 5000))
	pollUntil(t, 30*time.Second, "the key pool to fill", func() bool { return k.scrape(t)[liveSeries] >= 4 })
	k.idle(t)

	env.proxy.SetFault(kmstest.Fault{Outage: true})
	written := patterned(2, 7000)
	writeFile(t, k.path("during"), written)
	k.waitLiveKeys(t, 0) // closed; its key kept for the outage
	if got, err := os.ReadFile(k.path("during")); err != nil || !bytes.Equal(got, written) {
		t.Fatalf("reading back a file written during the outage: %v", err)
	}
	if _, err := os.ReadFile(k.path("before")); errnoFrom(err) != syscall.EIO {
		t.Errorf("a file closed before the outage: %v, want EIO", err)
	}

	env.proxy.Heal()
	if got := readFile(t, k.path("before")); !bytes.Equal(got, patterned(1, 5000)) {
		t.Fatal("before: differs after the outage")
	}
	k.idle(t)
	// The successful call ended the outage: the kept key is gone, so the
	// next open of "during" asks KMS again.
	env.proxy.Reset()
	if got := readFile(t, k.path("during")); !bytes.Equal(got, written) {
		t.Fatal("during: differs after the outage")
	}
	if d := env.proxy.Count("Decrypt"); d != 1 {
		t.Errorf("an open after the outage: %d Decrypt, want 1 (the kept key wiped)", d)
	}
}
