package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
)

// readyEnv names the descriptor a daemonized child reports readiness on.
const readyEnv = "KMSFS_READY_FD"

type mountFlags struct {
	readOnly, allowOther, daemon, debugFUSE bool
	trustConfig                             bool
	endpoint, region, localKey, logLevel    string
	keyCacheTTL                             time.Duration
	keyPool                                 int
	prefetchKeys                            bool
	metricsAddr, logFile                    string
	cpuProfile, trace                       string // debugging aids
}

func cmdMount(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("mount", "[flags] CIPHERDIR MOUNTPOINT", stderr)
	var m mountFlags
	fl.BoolVar(&m.readOnly, "read-only", false, "mount read-only")
	fl.BoolVar(&m.allowOther, "allow-other", false, "let other users use the mount; the kernel checks permissions (default_permissions)")
	fl.StringVar(&m.endpoint, "kms-endpoint", "", "KMS endpoint `URL`, replacing the volume's")
	fl.StringVar(&m.region, "region", "", "AWS `region`, replacing the volume's")
	fl.StringVar(&m.localKey, "local-key", "", "local key `FILE`, replacing the volume's key file path")
	fl.DurationVar(&m.keyCacheTTL, "key-cache-ttl", 0, "keep unwrapped data keys this long after the last close (0: wipe on last close)")
	fl.StringVar(&m.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fl.StringVar(&m.logFile, "log-file", "", "append the log to `FILE` instead of stderr (with -d, the default is syslog)")
	fl.BoolVar(&m.daemon, "daemon", false, "detach once the mount is ready; the exit status says whether it mounted")
	fl.BoolVar(&m.daemon, "d", false, "short for --daemon")
	fl.IntVar(&m.keyPool, "key-pool", 64, "data keys for new files generated ahead in the background (0: generate on create)")
	fl.BoolVar(&m.prefetchKeys, "prefetch-keys", false, "unwrap the keys of a listed directory's files ahead of their opens (for backup tools; keys unused for 30s are wiped)")
	fl.StringVar(&m.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at `host:port`")
	fl.BoolVar(&m.debugFUSE, "debug-fuse", false, "log every FUSE request")
	fl.StringVar(&m.cpuProfile, "debug-cpuprofile", "", "debugging aid: write a CPU profile of the mount process to `FILE` until it unmounts (go tool pprof)")
	fl.StringVar(&m.trace, "debug-trace", "", "debugging aid: write an execution trace of the mount process to `FILE` until it unmounts (go tool trace)")
	fl.BoolVar(&m.trustConfig, "trust-config", false, "trust CIPHERDIR/kmsfs.json as it is now, though it differs from the copy this machine trusts (after you changed it yourself)")
	pos, err := parseArgs(fl, args, "CIPHERDIR", "MOUNTPOINT")
	if err != nil {
		return err
	}
	level, err := parseLevel(m.logLevel)
	if err != nil {
		return err
	}
	if m.keyCacheTTL < 0 {
		return fail(exitUsage, "--key-cache-ttl %v: want 0 (off) or a positive duration", m.keyCacheTTL)
	}
	if m.keyPool < 0 {
		return fail(exitUsage, "--key-pool %d: want 0 (off) or a positive number of keys", m.keyPool)
	}
	if m.daemon && os.Getenv(readyEnv) == "" {
		return daemonize(stdout)
	}
	out := &swapWriter{w: stderr}
	if m.logFile != "" {
		f, err := os.OpenFile(m.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fail(exitUsage, "--log-file: %v", err)
		}
		defer f.Close()
		out.set(f)
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
	return mount(pos[0], pos[1], m, log, stdout, out)
}

// swapWriter lets a daemon move its log off the terminal it was started
// from once it is mounted.
type swapWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *swapWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *swapWriter) set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fail(exitUsage, "--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func mount(cipherDir, mountpoint string, m mountFlags, log *slog.Logger, stdout io.Writer, logOut *swapWriter) error {
	hardenProcess(log)
	setProcs(log)
	// A closed terminal or log pipe must not kill a mount that is
	// serving files: writes to it fail instead of raising SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	cipherDir, err := filepath.Abs(cipherDir)
	if err != nil {
		return err
	}
	if mountpoint, err = filepath.Abs(mountpoint); err != nil {
		return err
	}
	cfg, raw, err := loadVolume(cipherDir)
	if err != nil {
		return err
	}
	if err := checkMountpoint(mountpoint); err != nil {
		return err
	}
	// Before any keyring is built from the config: see trust.go.
	if err := checkTrust(cipherDir, cfg, raw, m.trustConfig, log); err != nil {
		return err
	}
	ctx := context.Background()
	kr, err := buildKeyring(ctx, cfg, keyOverrides{region: m.region, endpoint: m.endpoint, localKey: m.localKey})
	if err != nil {
		return err
	}
	if !m.readOnly {
		// A wrong or unusable key fails the mount now, in one line,
		// rather than every later create.
		if _, err := roundTrip(ctx, kr, []keyring.Keyring{kr}, cfg.VolumeID); err != nil {
			return err
		}
	}
	var cache *keyring.Cache
	if m.keyCacheTTL > 0 {
		cache = keyring.NewCache(kr, m.keyCacheTTL)
		defer cache.Close()
		kr = cache
	}
	metrics := keyring.NewMetrics(kr)
	kr = metrics
	root, err := kfs.NewRoot(kfs.Options{
		CipherDir:    cipherDir,
		Config:       cfg,
		Keyring:      kr,
		Logger:       log,
		ReadOnly:     m.readOnly,
		KeyPool:      m.keyPool,
		PrefetchKeys: m.prefetchKeys,
	})
	if err != nil {
		return fail(exitVolume, "%v", err)
	}
	defer root.Close()
	if m.metricsAddr != "" {
		stop, err := serveMetrics(m.metricsAddr, metrics, root, log)
		if err != nil {
			return fail(exitUsage, "--metrics-addr %s: %v", m.metricsAddr, err)
		}
		defer stop()
	}
	stopProfiles, err := startProfiles(m.cpuProfile, m.trace)
	if err != nil {
		return err
	}
	defer stopProfiles()
	srv, err := kfs.Mount(mountpoint, root, kfs.MountOptions{AllowOther: m.allowOther, Debug: m.debugFUSE})
	if err != nil {
		return mountError(mountpoint, err)
	}
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		return mountError(mountpoint, err)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for sig := range sigs {
			log.Info("unmounting", "signal", sig.String(), "mountpoint", mountpoint)
			unmountRetry(srv.Unmount, mountpoint, log)
		}
	}()
	log.Info("mounted", "cipherdir", cipherDir, "mountpoint", mountpoint, "volume", cfg.VolumeID, "locked_key_memory", keyring.LockedMemory())
	fmt.Fprintf(stdout, "kmsfs: mounted %s on %s\n", cipherDir, mountpoint)
	if f, ok := stdout.(*os.File); ok {
		f.Sync()
	}
	if reportReady() && m.logFile == "" {
		// Daemonized: the caller's stderr may go away; log to syslog.
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "kmsfs"); err == nil {
			logOut.set(w)
			defer w.Close()
		} else {
			logOut.set(io.Discard)
		}
	}
	if os.Getenv(daemonChildEnv) != "" {
		detachStdio()
	}
	srv.Wait()
	signal.Stop(sigs)
	close(sigs)
	log.Info("unmounted", "mountpoint", mountpoint)
	return nil
}

// startProfiles starts the debugging aids asked for (--debug-cpuprofile,
// --debug-trace; an empty name is not asked for) and returns what stops
// them.
func startProfiles(cpuProfile, traceFile string) (stop func(), err error) {
	stopCPU, err := startDebugFile(cpuProfile, "--debug-cpuprofile", pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		return nil, err
	}
	stopTrace, err := startDebugFile(traceFile, "--debug-trace", trace.Start, trace.Stop)
	if err != nil {
		stopCPU()
		return nil, err
	}
	return func() { stopTrace(); stopCPU() }, nil
}

// startDebugFile creates name and starts writing a profile to it; the
// returned func stops the profile and closes the file.
func startDebugFile(name, flag string, start func(io.Writer) error, stop func()) (func(), error) {
	if name == "" {
		return func() {}, nil
	}
	// 0600: the mount runs with umask 0 (hardenProcess).
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fail(exitUsage, "%s: %v", flag, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fail(exitUsage, "%s: %v", flag, err)
	}
	return func() { stop(); f.Close() }, nil
}

// unmountRetry unmounts; while files are open (EBUSY) it retries for ten
// seconds, then detaches the mount lazily so the process can finish once
// the last file is closed.
func unmountRetry(unmount func() error, mountpoint string, log *slog.Logger) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unmount()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("mountpoint still busy: detaching it; kmsfs exits when the last open file is closed", "mountpoint", mountpoint, "err", err.Error())
			if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil {
				exec.Command("fusermount3", "-u", "-z", mountpoint).Run()
			}
			return
		}
		log.Info("mountpoint busy, retrying unmount", "mountpoint", mountpoint, "err", err.Error())
		time.Sleep(time.Second)
	}
}

// hardenProcess keeps key material out of core dumps and swap: no core
// dumps, not ptrace-attachable by other users, files created with exactly
// the modes the kernel passes.
func hardenProcess(log *slog.Logger) {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("cannot disable core dumps", "err", err.Error())
	}
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	log.Debug("process hardened", "dumpable", dumpable)
	unix.Umask(0)
	if !keyring.LockedMemory() {
		log.Info("key memory cannot be mlocked (RLIMIT_MEMLOCK); keys may reach swap")
	}
}

// setProcs gives the mount process half of the CPUs it may use (at least
// one), unless GOMAXPROCS is set in the environment. Every FUSE request
// has an application thread waiting for it, and each request is a short
// burst of work between two blocking reads of /dev/fuse. With a P for
// every CPU the mount is much slower on small machines; the likely cause
// (measured, not proven) is the scheduler waking threads to look for work
// on the idle Ps, which take the CPUs the applications need. Measured on 2
// vCPUs (tmpfs, same run, bench/README.md): 4 KiB random reads 23-26k ->
// 37k IOPS, untar of 30k files 14.2-14.4 s -> 7.8-8.4 s, creating 10k
// files 2.2-2.3 s -> 1.4-1.5 s; sequential reads lose (1.6 -> 1.3 GB/s),
// since decryption then runs on one core.
func setProcs(log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	lo := max(1, runtime.GOMAXPROCS(0)/2)
	runtime.GOMAXPROCS(lo)
	log.Debug("scheduler", "gomaxprocs", lo, "cpus", runtime.NumCPU())
}

// loadVolume reads and checks CIPHERDIR's config, returning it parsed and
// as the bytes it was parsed from.
func loadVolume(cipherDir string) (*kfs.Config, []byte, error) {
	st, err := os.Stat(cipherDir)
	if err != nil {
		return nil, nil, fail(exitVolume, "CIPHERDIR %s does not exist: create a volume with kmsfs init %s", cipherDir, cipherDir)
	}
	if !st.IsDir() {
		return nil, nil, fail(exitVolume, "CIPHERDIR %s is not a directory", cipherDir)
	}
	cfg, raw, err := kfs.ReadConfig(cipherDir)
	if errors.Is(err, kfs.ErrNoConfig) {
		entries, _ := os.ReadDir(cipherDir)
		if len(entries) == 0 {
			return nil, nil, fail(exitVolume, "%s is not a kmsfs volume yet: run kmsfs init %s first", cipherDir, cipherDir)
		}
		return nil, nil, fail(exitVolume, "%s is not a kmsfs volume (no %s); refusing to mount a directory that holds other data", cipherDir, kfs.ConfigName)
	}
	if err != nil {
		return nil, nil, fail(exitVolume, "%s: %v", cipherDir, err)
	}
	return cfg, raw, nil
}

// checkMountpoint wants an existing directory that is not already a mount
// point (a second kmsfs on top of a first is almost always a mistake).
func checkMountpoint(mountpoint string) error {
	st, err := os.Stat(mountpoint)
	if err != nil {
		return fail(exitMount, "mountpoint %s does not exist: create it with mkdir", mountpoint)
	}
	if !st.IsDir() {
		return fail(exitMount, "mountpoint %s is not a directory", mountpoint)
	}
	mounted, err := isMountpoint(mountpoint)
	if err == nil && mounted {
		return fail(exitMount, "%s is already a mount point: unmount it first (kmsfs unmount %s)", mountpoint, mountpoint)
	}
	return nil
}

// isMountpoint looks mountpoint up in /proc/self/mountinfo.
func isMountpoint(mountpoint string) (bool, error) {
	if real, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mountpoint {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mountError(mountpoint string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "fusermount"):
		return fail(exitMount, "mount %s: %v: install fuse3 (apt-get install fuse3), or run as root", mountpoint, err)
	case strings.Contains(msg, "/dev/fuse"):
		return fail(exitMount, "mount %s: %v: this machine has no usable /dev/fuse (load the fuse module, or give the container the device)", mountpoint, err)
	}
	return fail(exitMount, "mount %s: %v", mountpoint, err)
}

// daemonize runs this command again without -d in a new session and waits
// until the child reports the mount ready (or exits).
func daemonize(stdout io.Writer) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyEnv+"=3", daemonChildEnv+"=1")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fail(exitMount, "start the mount process: %v", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	r.Close()
	if strings.HasPrefix(line, "ok ") {
		fmt.Fprintln(stdout, strings.TrimPrefix(strings.TrimSpace(line), "ok "))
		cmd.Process.Release()
		return nil
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		// The child already said why on stderr.
		os.Exit(ee.ExitCode())
	}
	return fail(exitMount, "the mount process ended without mounting")
}

// daemonChildEnv marks the process daemonize started.
const daemonChildEnv = "KMSFS_DAEMON_CHILD"

// reportReady tells a waiting daemonize parent that the mount is up, and
// reports whether there was one.
func reportReady() bool {
	fdStr := os.Getenv(readyEnv)
	if fdStr == "" {
		return false
	}
	fd, err := strconv.Atoi(fdStr)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), "ready")
	fmt.Fprintln(f, "ok kmsfs: mounted")
	f.Close()
	os.Unsetenv(readyEnv)
	return true
}

// detachStdio points stdin, stdout and stderr at /dev/null, so the daemon
// holds no pipe or terminal of whoever started it.
func detachStdio() {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return
	}
	for _, fd := range []int{0, 1, 2} {
		unix.Dup2(int(devnull.Fd()), fd)
	}
	devnull.Close()
}
