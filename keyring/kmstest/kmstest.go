// Package kmstest runs a real local-kms (github.com/nsmithuk/local-kms, a
// tool of this module) for tests, seeded with fixed keys, and a proxy in
// front of any KMS endpoint that counts calls and injects faults.
//
// Every Start gets its own local-kms process and database, so a test may
// disable or delete keys without disturbing others. local-kms starts in a
// few milliseconds; the binary is built once per test process by the go
// command (go tool -n), which needs the module's go.mod.
//
// local-kms listens on all interfaces (it cannot be told otherwise); the
// helpers talk to it on 127.0.0.1. It serves only the public test keys
// below.
package kmstest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/keyring/awskms"
)

// localKMSTool is the tool's package path in go.mod.
const localKMSTool = "github.com/nsmithuk/local-kms"

const (
	buildTimeout = 5 * time.Minute  // first build of local-kms without a warm cache
	startTimeout = 20 * time.Second // from exec to "started on"
	adminTimeout = 10 * time.Second // one admin call (DisableKey...)
)

// Static test credentials: local-kms checks no signature, so any will do.
// They are not an AWS key.
const (
	testAccessKeyID     = "KMSTESTACCESSKEYID"
	testSecretAccessKey = "kmstest-secret-access-key-not-a-secret"
)

// Server is a running local-kms. Its methods are safe for concurrent use.
type Server struct {
	endpoint string
	admin    *kms.Client
}

// Start runs a local-kms seeded with keys A and B and AliasName (see the
// constants) and stops it in t.Cleanup. Key B is rotated: it has two
// backing keys. Start fails t if local-kms cannot be built or does not
// listen within a bounded time; its output is logged if t fails.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, seedYAML(true))
}

// StartBeforeRotation runs a local-kms as Start does, except that key B has
// only its first backing key: what it wraps under key B is, to a server
// from Start, a blob made before B's rotation.
func StartBeforeRotation(t testing.TB) *Server {
	t.Helper()
	return start(t, seedYAML(false))
}

var (
	ansiEscape   = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	seededLine   = regexp.MustCompile(`(\d+) new keys and (\d+) new aliases added`)
	listenedLine = regexp.MustCompile(`Local KMS started on \S*:(\d+)`)
)

func start(t testing.TB, seed string) *Server {
	t.Helper()
	bin, err := localKMSBinary()
	if err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	dir := t.TempDir()
	seedPath := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seedPath, []byte(seed), 0o600); err != nil {
		t.Fatalf("kmstest: write seed: %v", err)
	}

	cmd := exec.Command(bin)
	cmd.Dir = dir
	// A fixed environment: no KMS_* or AWS_* of the developer's leaks in.
	cmd.Env = []string{
		"PORT=0", // the kernel picks a free port; local-kms logs it
		"KMS_ACCOUNT_ID=" + AccountID,
		"KMS_REGION=" + Region,
		"KMS_DATA_PATH=" + filepath.Join(dir, "data"),
		"KMS_SEED_PATH=" + seedPath,
	}
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := startChild(cmd); err != nil {
		out.Close()
		w.Close()
		t.Fatalf("kmstest: start local-kms: %v", err)
	}
	w.Close() // the child holds the write end now

	var logs logBuffer
	started := make(chan startResult, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer out.Close()
		watchStart(out, &logs, started)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-readDone
		if t.Failed() {
			t.Logf("kmstest: local-kms output:\n%s", logs.String())
		}
	})

	var res startResult
	select {
	case res = <-started:
	case <-time.After(startTimeout):
		res.err = fmt.Errorf("local-kms did not report listening within %v", startTimeout)
	}
	if res.err != nil {
		t.Fatalf("kmstest: %v", res.err) // Cleanup logs its output
	}

	s := &Server{endpoint: "http://127.0.0.1:" + strconv.Itoa(res.port)}
	s.admin = s.newClient(t)
	return s
}

type startResult struct {
	port int
	err  error
}

// watchStart copies local-kms's output into logs and reports on started
// once it listens (or exits first). Readiness is read from the output, never
// waited for: local-kms logs "started on" after binding its port.
func watchStart(out *os.File, logs *logBuffer, started chan<- startResult) {
	reported := false
	report := func(r startResult) {
		if !reported {
			reported = true
			started <- r
		}
	}
	keys, aliases := -1, -1
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := ansiEscape.ReplaceAllString(sc.Text(), "")
		logs.WriteLine(line)
		if m := seededLine.FindStringSubmatch(line); m != nil {
			keys, _ = strconv.Atoi(m[1])
			aliases, _ = strconv.Atoi(m[2])
		}
		if m := listenedLine.FindStringSubmatch(line); m != nil {
			port, _ := strconv.Atoi(m[1])
			if keys != seededKeys || aliases != seededAliases {
				report(startResult{err: fmt.Errorf("local-kms seeded %d keys and %d aliases, want %d and %d",
					keys, aliases, seededKeys, seededAliases)})
			}
			report(startResult{port: port})
		}
	}
	report(startResult{err: fmt.Errorf("local-kms exited before listening")})
}

// Endpoint is the server's URL, for AWSKMSConfig.Endpoint or a Proxy.
func (s *Server) Endpoint() string { return s.endpoint }

// Region is the server's region (Region).
func (s *Server) Region() string { return Region }

// Env is the environment a child process (kmsfs under test) needs to use
// this server through the SDK's default chains: static test credentials,
// the region, the endpoint, and no shared config or instance metadata.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + testAccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + testSecretAccessKey,
		"AWS_REGION=" + Region,
		"AWS_ENDPOINT_URL_KMS=" + s.endpoint,
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client returns a KMS client of the server with static test credentials,
// for calls the helpers below do not cover.
func (s *Server) Client(t testing.TB) *kms.Client { return s.newClient(t) }

func (s *Server) newClient(t testing.TB) *kms.Client {
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	return kms.NewFromConfig(aws.Config{
		Region:      Region,
		Credentials: staticCredentials(),
		HTTPClient:  hc,
	}, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(s.endpoint)
	})
}

func staticCredentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(testAccessKeyID, testSecretAccessKey, "")
}

// Config returns an AWSKMSConfig for keyID on this server: static test
// credentials, 3 attempts, a 10 ms backoff cap (retried failures fail
// fast) and a 60 s call timeout. Each attempt gets a third of it: tests
// count requests at a Proxy, and an attempt that a loaded machine under
// -race made slow (64 calls at once took over the 1.7 s a 5 s budget
// gave) must not be retried and counted twice. Tests of the timeouts set
// their own CallTimeout. Change fields (Endpoint to a Proxy's) as needed.
func (s *Server) Config(keyID string) awskms.Config {
	return awskms.Config{
		KeyID:       keyID,
		Region:      Region,
		Endpoint:    s.endpoint,
		Credentials: staticCredentials(),
		MaxAttempts: 3,
		MaxBackoff:  10 * time.Millisecond,
		CallTimeout: time.Minute,
	}
}

// Keyring returns an AWSKMS keyring for keyID (an ID, ARN, alias or alias
// ARN) on this server, built from Config.
func (s *Server) Keyring(t testing.TB, keyID string) *awskms.Keyring {
	t.Helper()
	k, err := awskms.New(context.Background(), s.Config(keyID))
	if err != nil {
		t.Fatalf("kmstest: keyring for %s: %v", keyID, err)
	}
	return k
}

// DisableKey disables keyID; KMS then refuses it with DisabledException.
func (s *Server) DisableKey(t testing.TB, keyID string) {
	t.Helper()
	s.admincall(t, "DisableKey", keyID, func(ctx context.Context) error {
		_, err := s.admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(keyID)})
		return err
	})
}

// EnableKey enables keyID again.
func (s *Server) EnableKey(t testing.TB, keyID string) {
	t.Helper()
	s.admincall(t, "EnableKey", keyID, func(ctx context.Context) error {
		_, err := s.admin.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(keyID)})
		return err
	})
}

// ScheduleDeletion schedules keyID for deletion in 7 days (the minimum);
// KMS then refuses it with KMSInvalidStateException.
func (s *Server) ScheduleDeletion(t testing.TB, keyID string) {
	t.Helper()
	s.admincall(t, "ScheduleKeyDeletion", keyID, func(ctx context.Context) error {
		_, err := s.admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{
			KeyId:               aws.String(keyID),
			PendingWindowInDays: aws.Int32(7),
		})
		return err
	})
}

func (s *Server) admincall(t testing.TB, op, keyID string, call func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	if err := call(ctx); err != nil {
		t.Fatalf("kmstest: %s %s: %v", op, keyID, err)
	}
}

// logBuffer collects local-kms's output lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (l *logBuffer) WriteLine(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.WriteString(s)
	l.buf.WriteByte('\n')
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// build is the local-kms binary, built once per test process.
var build struct {
	once sync.Once
	path string
	err  error
}

// localKMSBinary returns the path of the local-kms tool binary, which the
// go command builds into its cache (go tool -n builds, then prints the path
// instead of running it). It runs in the module root so go.mod's tool
// directive and version pin apply.
func localKMSBinary() (string, error) {
	build.once.Do(func() {
		build.path, build.err = buildLocalKMS()
	})
	return build.path, build.err
}

func buildLocalKMS() (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build local-kms: no go command in PATH: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	gomod, err := goOutput(ctx, goCmd, "", "env", "GOMOD")
	if err != nil {
		return "", fmt.Errorf("build local-kms: %v", err)
	}
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("build local-kms: not inside the kmsfs module (go env GOMOD is %q)", gomod)
	}
	path, err := goOutput(ctx, goCmd, filepath.Dir(gomod), "tool", "-n", localKMSTool)
	if err != nil {
		return "", fmt.Errorf("build local-kms: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.IsDir() {
		return "", fmt.Errorf("build local-kms: go tool -n printed %q, not a binary", path)
	}
	return path, nil
}

func goOutput(ctx context.Context, goCmd, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}
