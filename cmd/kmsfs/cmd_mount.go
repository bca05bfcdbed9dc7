package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

type mountFlags struct {
	readOnly, allowOther, daemon, debugFUSE bool
	defaultPermissions                      bool
	trustConfig, nonempty, requireTrusted   bool
	localKey, logLevel                      string
	endpoint, region                        keyedValue
	keyCacheTTL, branchKeyTTL, releaseIdle  time.Duration
	idle                                    time.Duration
	keyPool                                 int
	prefetchKeys, keyReadahead              bool
	metricsAddr, logFile                    string
	cpuProfile, trace                       string // debugging aids (debug.go)
}

func (m *mountFlags) define(fl *flag.FlagSet) {
	fl.BoolVar(&m.readOnly, "read-only", false, "mount read-only")
	fl.BoolVar(&m.allowOther, "allow-other", false, "let other users use the mount; the kernel checks permissions (default_permissions)")
	fl.BoolVar(&m.defaultPermissions, "default-permissions", true, "the kernel checks every access against mode and owner; =false only in a root mount without --allow-other, for a round trip less per file created or removed (root processes without CAP_DAC_OVERRIDE then pass too)")
	fl.Var(&m.endpoint, "kms-endpoint", "KMS endpoint `URL`, replacing the volume's; KEY=URL for one of several KMS keys (repeat)")
	fl.Var(&m.region, "region", "AWS `region`, replacing the volume's; KEY=REGION for one of several KMS keys (repeat)")
	fl.StringVar(&m.localKey, "local-key", "", "local key `FILE`, replacing the volume's key file path")
	fl.DurationVar(&m.keyCacheTTL, "key-cache-ttl", 0, "keep unwrapped data keys this long after the last close (0: wipe on last close)")
	fl.StringVar(&m.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fl.StringVar(&m.logFile, "log-file", "", "append the log to `FILE` instead of stderr (with -d, the default is syslog, or without one $XDG_STATE_HOME/kmsfs/mount-NAME-HASH.log)")
	fl.BoolVar(&m.daemon, "daemon", false, "detach once the mount is ready; the exit status says whether it mounted")
	fl.BoolVar(&m.daemon, "d", false, "short for --daemon")
	fl.IntVar(&m.keyPool, "key-pool", 64, "data keys for new files generated ahead in the background (0: generate at the first write); not used with branch keys")
	fl.DurationVar(&m.branchKeyTTL, "branch-key-ttl", 15*time.Minute, "with branch keys: wipe an unwrapped branch key this long after its unwrap, and unwrap it again when next needed")
	fl.BoolVar(&m.prefetchKeys, "prefetch-keys", false, "unwrap the keys of a listed directory's files as it is listed, ahead of their opens (eager, for backup tools; keys unused for 30s are wiped; key readahead stays on beside it)")
	fl.BoolVar(&m.keyReadahead, "key-readahead", true, "when files of a directory are opened one after the other, unwrap the next ones' keys ahead (--key-readahead=false: off; off by default when every keyring is a local key)")
	fl.StringVar(&m.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at `host:port`")
	fl.BoolVar(&m.debugFUSE, "debug-fuse", false, "log every FUSE request, with file names and the first bytes of each read and write: plaintext in the log")
	fl.StringVar(&m.cpuProfile, "debug-cpuprofile", "", "debugging aid: write a CPU profile of the mount process to `FILE` until it unmounts (go tool pprof)")
	fl.StringVar(&m.trace, "debug-trace", "", "debugging aid: write an execution trace of the mount process to `FILE` until it unmounts (go tool trace)")
	fl.DurationVar(&m.releaseIdle, "release-memory-after", 30*time.Second, "return memory a burst of work left behind to the system once the mount has been idle this long (0: leave it to the Go runtime)")
	fl.DurationVar(&m.idle, "idle", 0, "unmount after this long with no request and no open file (0: never)")
	fl.BoolVar(&m.nonempty, "nonempty", false, "mount over a mountpoint that is not empty, hiding its files")
	fl.BoolVar(&m.requireTrusted, "require-trusted", false, "refuse a volume this machine has no trusted copy of the config of, instead of trusting it on first use (a mount from fstab always does)")
	fl.BoolVar(&m.trustConfig, "trust-config", false, "trust CIPHERDIR/kmsfs.json as it is now, though it differs from the copy this machine trusts (after you changed it yourself)")
}

// check refuses flag values that parse but make no sense.
func (m *mountFlags) check() error {
	if m.keyCacheTTL < 0 {
		return fail(exitUsage, "--key-cache-ttl %v: want 0 (off) or a positive duration", m.keyCacheTTL)
	}
	if m.keyPool < 0 {
		return fail(exitUsage, "--key-pool %d: want 0 (off) or a positive number of keys", m.keyPool)
	}
	if m.releaseIdle < 0 {
		return fail(exitUsage, "--release-memory-after %v: want 0 (off) or a positive duration", m.releaseIdle)
	}
	if m.branchKeyTTL <= 0 {
		return fail(exitUsage, "--branch-key-ttl %v: want a positive duration", m.branchKeyTTL)
	}
	if m.idle < 0 {
		return fail(exitUsage, "--idle %v: want 0 (never) or a positive duration", m.idle)
	}
	if !m.defaultPermissions {
		switch {
		case m.allowOther:
			return fail(exitUsage, "--default-permissions=false with --allow-other would let every user past the files' modes: drop one of them")
		case !kfs.CanDropKernelChecks(kfs.MountOptions{}, os.Getuid(), os.Geteuid()):
			return fail(exitUsage, "--default-permissions=false: only a mount by root (user ID 0 in the initial user namespace, not a set-user-ID program) may go without the kernel's permission checks")
		}
	}
	return nil
}

func cmdMount(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("mount", "[flags] CIPHERDIR MOUNTPOINT", stdout)
	var m mountFlags
	m.define(fl)
	pos, err := parseArgs(fl, args, "CIPHERDIR", "MOUNTPOINT")
	if err != nil {
		return err
	}
	level, err := parseLevel(m.logLevel)
	if err != nil {
		return err
	}
	if err := m.check(); err != nil {
		return err
	}
	if m.daemon && os.Getenv(readyEnv) == "" {
		return daemonize(append([]string{"mount"}, args...), stdout, m.logFile, pos[1])
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
	err = mount(pos[0], pos[1], m, fl, log, stdout, out)
	if err != nil && m.logFile != "" {
		// stderr has the line too, but a mount from fstab or a unit file
		// is often read from its log alone.
		log.Error("mount failed", "cipherdir", pos[0], "mountpoint", pos[1], "err", err.Error())
	}
	return err
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fail(exitUsage, "--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// mount checks the volume, the mountpoint and the trusted copy of the
// config, builds the keyring chain and the filesystem, and serves it until
// it is unmounted.
func mount(cipherDir, mountpoint string, m mountFlags, fl *flag.FlagSet, log *slog.Logger, stdout io.Writer, logOut *swapWriter) error {
	setupProcess(log)
	cipherDir, err := filepath.Abs(cipherDir)
	if err != nil {
		return err
	}
	if mountpoint, err = filepath.Abs(mountpoint); err != nil {
		return err
	}
	vol, err := loadVolume(cipherDir)
	if err != nil {
		return err
	}
	cfg := vol.Config
	if err := checkMountpoint(mountpoint, cipherDir, m.nonempty); err != nil {
		return err
	}
	if mnts, err := kmsfsMounts(vol.Dir); err == nil && len(mnts) > 0 && !m.readOnly {
		// Supported, as two hosts sharing it are (README, "Sharing a
		// CIPHERDIR"), but more often a mistake than a plan.
		log.Info("this CIPHERDIR is mounted already: write each file through one of the mounts only", "cipherdir", vol.Dir, "mounted_on", mnts[0])
	}
	// Only once this machine trusts the config: see trust.go.
	ctx := context.Background()
	if pending, _ := vol.PendingRewrap(); pending {
		return fail(exitVolume, "a kmsfs rewrap of %s was interrupted: its files are wrapped under the old keyrings or the new ones. Finish it first: run the same kmsfs rewrap command again", cipherDir)
	}
	ov := keyOverrides{region: m.region, endpoint: m.endpoint, localKey: m.localKey, skipUnavailable: m.readOnly, requireTrusted: m.requireTrusted, log: log}
	kr, err := trustedKeyring(ctx, vol, m.trustConfig, ov, log)
	if err != nil {
		if !m.readOnly {
			err = readOnlyHint(err, cfg)
		}
		return err
	}
	if cfg.Branch() {
		// A new file's key and a first open cost no key service call.
		m.keyPool, m.prefetchKeys, m.keyReadahead = 0, false, false
	} else if flagSet(fl, "branch-key-ttl") {
		return fail(exitUsage, "--branch-key-ttl: this volume has no branch keys")
	}
	keepProcs(cfg)
	if localOnly(cfg) && !flagSet(fl, "key-readahead") {
		// An unwrap is a local AES-GCM open, no round trip to hide:
		// readahead would only read each header twice (an open, an
		// fstat, a read and a close more per file of a scan).
		m.keyReadahead = false
	}
	keys, err := assembleKeyring(vol, kr, m)
	if err != nil {
		return err
	}
	defer keys.stop()
	if !m.readOnly {
		// A wrong or unusable key fails the mount now, in one line,
		// rather than every later create.
		if err := keys.prove(ctx, vol); err != nil {
			return readOnlyHint(err, cfg)
		}
	}
	root, err := kfs.NewRoot(kfs.Options{
		Volume:       vol,
		Keyring:      keys.kr,
		Logger:       log,
		ReadOnly:     m.readOnly,
		KeyPool:      m.keyPool,
		PrefetchKeys: m.prefetchKeys,
		KeyReadahead: m.keyReadahead,
	})
	if err != nil {
		return fail(exitVolume, "%v", err)
	}
	defer root.Close()
	stopAids, err := startAids(m, keys, root, log)
	if err != nil {
		return err
	}
	defer stopAids()
	return serve(root, mountpoint, m, log, func() (unmounted func()) {
		log.Info("mounted", "cipherdir", cipherDir, "mountpoint", mountpoint, "volume", cfg.VolumeID, "locked_key_memory", keyring.LockedMemory())
		mounted := fmt.Sprintf("kmsfs: mounted %s on %s", cipherDir, mountpoint)
		fmt.Fprintln(stdout, mounted)
		if f, ok := stdout.(*os.File); ok {
			f.Sync()
		}
		if err := sdNotify("READY=1\nSTATUS=Mounted " + cipherDir + " on " + mountpoint); err != nil {
			log.Warn("could not tell the service manager that the mount is ready", "err", err.Error())
		}
		return daemonReady(logOut, m.logFile, mounted)
	})
}

// mountKeys is the keyring chain of a mount, from the file system down:
// the request metrics, the key cache (if asked for), the branch keyring
// (a branch-key volume), and the volume's own keyrings, each behind its
// metrics. Every layer keeps plain counters that metrics.go exports.
type mountKeys struct {
	kr       keyring.Keyring       // what the file system calls
	requests *keyring.Metrics      // counts what the file system asks of the chain
	services []serviceMetrics      // count the calls that reach each of the volume's keyrings
	cache    *keyring.Cache        // nil without --key-cache-ttl
	branch   *volume.BranchKeyring // nil for a per-file volume
	inner    keyring.Keyring       // the volume's keyrings, without metrics
	stops    []func()
}

// serviceMetrics are the metrics of one of the volume's keyrings, named
// for the metrics' keyring label.
type serviceMetrics struct {
	name string
	m    *keyring.Metrics
}

// assembleKeyring builds the chain over inner, the volume's keyrings.
func assembleKeyring(vol *volume.Volume, inner keyring.Keyring, m mountFlags) (*mountKeys, error) {
	k := &mountKeys{inner: inner}
	var err error
	if k.kr, k.services, err = instrument(inner); err != nil {
		return nil, err
	}
	if vol.Config.Branch() {
		bk, err := volume.NewBranchKeyring(vol, k.kr, m.branchKeyTTL)
		if err != nil {
			return nil, err
		}
		k.branch, k.kr = bk, bk
		k.stops = append(k.stops, bk.Close)
	}
	if m.keyCacheTTL > 0 {
		k.cache = keyring.NewCache(k.kr, m.keyCacheTTL)
		k.kr = k.cache
		k.stops = append(k.stops, k.cache.Close)
	}
	k.requests = keyring.NewMetrics(k.kr)
	k.kr = k.requests
	return k, nil
}

// instrument puts metrics in front of each of the volume's keyrings: inner
// itself, or each member of the Multi that buildKeyring made of several
// (those it loaded: a read-only mount may leave some out).
func instrument(inner keyring.Keyring) (keyring.Keyring, []serviceMetrics, error) {
	members := []keyring.Keyring{inner}
	multi, isMulti := inner.(*keyring.Multi)
	if isMulti {
		members = multi.Members()
	}
	var services []serviceMetrics
	wrapped := make([]keyring.Keyring, len(members))
	for i, mem := range members {
		mm := keyring.NewMetrics(mem)
		services = append(services, serviceMetrics{name: keyringLabel(mem), m: mm})
		wrapped[i] = mm
	}
	if !isMulti {
		return wrapped[0], services, nil
	}
	kr, err := keyring.NewMulti(wrapped...)
	if err != nil {
		return nil, nil, fail(exitKey, "%v", err)
	}
	return kr, services, nil
}

// stop wipes what the chain holds.
func (k *mountKeys) stop() {
	for i := len(k.stops) - 1; i >= 0; i-- {
		k.stops[i]()
	}
}

// prove makes the keyring calls a writable mount needs to work, so that a
// wrong or unusable key fails the mount in one line: a per-file volume's
// round trip (roundTrip); in a branch-key volume, the active branch key
// (one call: its unwrap, or the making of a new one).
func (k *mountKeys) prove(ctx context.Context, vol *volume.Volume) error {
	if k.branch == nil {
		_, err := roundTrip(ctx, k.inner, []keyring.Keyring{k.inner}, vol.IDHex)
		return err
	}
	dk, _, err := k.branch.GenerateDataKey(ctx, vol.FileContext(blockcipher.NewID()))
	if err != nil {
		return keyError("loading the active branch key", err)
	}
	dk.Wipe()
	return nil
}

// readOnlyHint adds to a writable mount's key failure that a read-only
// mount would do without the failing key, when the volume has another
// keyring to read with: a writable mount needs every keyring, since each
// new file is wrapped under all.
func readOnlyHint(err error, cfg *volume.Config) error {
	unwrapping := 0
	for _, s := range cfg.Keyrings {
		if s.Kind != keyring.KindAge {
			unwrapping++
		}
	}
	var ce *cliError
	if unwrapping < 2 || !errors.As(err, &ce) {
		return err
	}
	return fail(ce.code, "%s. A writable mount needs every key of the volume (new files are wrapped under all); to read with the others, mount with --read-only", ce.msg)
}

// startAids starts the metrics server and the debugging aids that were
// asked for, and returns what stops them.
func startAids(m mountFlags, keys *mountKeys, root *kfs.Root, log *slog.Logger) (stop func(), err error) {
	stopMetrics := func() {}
	if m.metricsAddr != "" {
		stopMetrics, err = serveMetrics(m.metricsAddr, keys, root, log)
		if err != nil {
			return nil, fail(exitUsage, "--metrics-addr %s: %v", m.metricsAddr, err)
		}
	}
	stopProfiles, err := startProfiles(m.cpuProfile, m.trace)
	if err != nil {
		stopMetrics()
		return nil, err
	}
	stopRelease := releaseWhenIdle(m.releaseIdle, log)
	return func() { stopRelease(); stopProfiles(); stopMetrics() }, nil
}

// serve mounts root at mountpoint, calls mounted once the mount answers,
// and serves it until it is unmounted (kmsfs unmount, umount, SIGINT or
// SIGTERM, or --idle); then it calls what mounted returned. It tells a
// service manager STOPPING=1 as the unmount begins.
func serve(root *kfs.Root, mountpoint string, m mountFlags, log *slog.Logger, mounted func() (unmounted func())) error {
	if m.debugFUSE {
		log.Warn("--debug-fuse: every FUSE request is logged, with file names and the first bytes of each read and write: plaintext in the log")
	}
	srv, err := kfs.Mount(mountpoint, root, kfs.MountOptions{AllowOther: m.allowOther, NoDefaultPermissions: !m.defaultPermissions, Debug: m.debugFUSE})
	if err != nil {
		return mountError(mountpoint, err)
	}
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		return mountError(mountpoint, err)
	}
	stopping := sync.OnceFunc(func() {
		if err := sdNotify("STOPPING=1\nSTATUS=Unmounting " + mountpoint); err != nil {
			log.Warn("could not tell the service manager that the mount is stopping", "err", err.Error())
		}
	})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if os.Getenv(daemonChildEnv) != "" {
		// A session leader with no terminal: a hangup can only come
		// from a terminal someone planted for the mount to open.
		signal.Ignore(syscall.SIGHUP)
	} else {
		// The terminal went away: unmount cleanly rather than die.
		signal.Notify(sigs, syscall.SIGHUP)
	}
	go func() {
		for sig := range sigs {
			log.Info("unmounting", "signal", sig.String(), "mountpoint", mountpoint)
			stopping()
			unmountRetry(srv.Unmount, mountpoint, log)
		}
	}()
	unmounted := mounted()
	defer unmounted()
	done := make(chan struct{})
	if m.idle > 0 {
		go watchIdle(root, m.idle, srv.Unmount, log, done)
	}
	srv.Wait()
	close(done)
	stopping()
	signal.Stop(sigs)
	close(sigs)
	log.Info("unmounted", "mountpoint", mountpoint)
	return nil
}

// loadVolume opens CIPHERDIR and checks its config.
func loadVolume(cipherDir string) (*volume.Volume, error) {
	st, err := os.Stat(cipherDir)
	if err != nil {
		return nil, fail(exitVolume, "CIPHERDIR %s does not exist: create a volume with kmsfs init %s", cipherDir, cipherDir)
	}
	if !st.IsDir() {
		return nil, fail(exitVolume, "CIPHERDIR %s is not a directory", cipherDir)
	}
	vol, err := volume.Open(cipherDir)
	if errors.Is(err, volume.ErrNoConfig) {
		entries, _ := os.ReadDir(cipherDir)
		if len(entries) == 0 {
			return nil, fail(exitVolume, "%s is not a kmsfs volume yet: run kmsfs init %s first", cipherDir, cipherDir)
		}
		return nil, fail(exitVolume, "%s is not a kmsfs volume (no %s) but holds other data: name the CIPHERDIR kmsfs init made", cipherDir, volume.ConfigName)
	}
	if err != nil {
		return nil, fail(exitVolume, "%s: %v%s", cipherDir, err, restoreHint(err))
	}
	return vol, nil
}

// restoreHint says where a good kmsfs.json may be found when the one in
// CIPHERDIR does not parse: this machine's trusted copies are exact copies.
func restoreHint(err error) string {
	var ce *volume.ConfigError
	if !errors.As(err, &ce) || errors.Is(err, volume.ErrNewerFormat) {
		return ""
	}
	if d, derr := trustDir(); derr == nil {
		return fmt.Sprintf("; restore %s from a backup, or from this machine's trusted copy %s/VOLUME_ID.json if it has one", volume.ConfigName, d)
	}
	return fmt.Sprintf("; restore %s from a backup", volume.ConfigName)
}

// localOnly reports whether every keyring of the volume is a local key.
func localOnly(cfg *volume.Config) bool {
	for _, k := range cfg.Keyrings {
		if k.Kind != keyring.KindLocal {
			return false
		}
	}
	return len(cfg.Keyrings) > 0
}
