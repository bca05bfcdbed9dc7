package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// mounted is a filesystem under test, ready at dir.
type mounted struct {
	dir     string
	backing string     // the directory it stores into (its CIPHERDIR), for syncfs
	pid     func() int // its daemon's process ID (0: none), for counting syscalls
	stop    func() error
}

// system is one filesystem under test: native, a FUSE baseline, a peer, or
// kmsfs in one configuration.
type system struct {
	name  string
	kms   bool            // kmsfs with the aws-kms keyring (bench/fastkms)
	skip  map[string]bool // workloads not run on this system
	setup func(e *env, base string) (*mounted, error)
}

// env holds what the runner built and started once.
type env struct {
	bin         string // directory of built binaries
	kmsEndpoint string // bench/fastkms, no added latency
	kmsSlow     string // bench/fastkms with kmsLatency
	awsEnv      []string
	mountArgs   []string // -kmsfs-args: added to every kmsfs mount (trials)
	altBin      string   // -kmsfs-alt: a second kmsfs binary, run as system kmsfs-alt (trials)
	initDone    func()   // called by kmsfsSetup between init and mount (set by mountCalls)
}

func (e *env) path(name string) string { return filepath.Join(e.bin, name) }

func run(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// startReady starts a foreground daemon and waits for a stdout line with
// the given prefix, which it returns.
func startReady(env []string, prefix string, name string, args ...string) (*exec.Cmd, string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && strings.HasPrefix(sc.Text(), prefix) {
				ok = true
				ready <- sc.Text()
			}
		}
		if !ok {
			ready <- ""
		}
	}()
	select {
	case line := <-ready:
		if line == "" {
			cmd.Wait()
			return nil, "", fmt.Errorf("%s exited before it was ready", name)
		}
		return cmd, line, nil
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		return nil, "", fmt.Errorf("%s not ready after 60s", name)
	}
}

func unmount(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = syscall.Unmount(dir, 0); err == nil || err == syscall.EINVAL {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmount %s: %v", dir, err)
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func stopCmd(cmd *exec.Cmd, dir string) func() error {
	return func() error {
		err := unmount(dir)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
		return err
	}
}

var systems = []system{
	{name: "native", setup: func(e *env, base string) (*mounted, error) {
		d := filepath.Join(base, "native")
		return &mounted{dir: d, backing: d, pid: func() int { return 0 }, stop: func() error { return nil }}, mkdirs(d)
	}},
	{name: "loopback", setup: func(e *env, base string) (*mounted, error) {
		orig, mnt := filepath.Join(base, "lb-orig"), filepath.Join(base, "lb-mnt")
		if err := mkdirs(orig, mnt); err != nil {
			return nil, err
		}
		cmd, _, err := startReady(nil, "mounted", e.path("loopback"), orig, mnt)
		if err != nil {
			return nil, err
		}
		return &mounted{dir: mnt, backing: orig, pid: func() int { return cmd.Process.Pid }, stop: stopCmd(cmd, mnt)}, nil
	}},
	{name: "gocryptfs", setup: func(e *env, base string) (*mounted, error) {
		c, mnt := filepath.Join(base, "gc-cipher"), filepath.Join(base, "gc-mnt")
		if err := mkdirs(c, mnt); err != nil {
			return nil, err
		}
		if _, err := run(nil, "gocryptfs", "-init", "-q", "-extpass", "echo benchpass", "-scryptn", "10", c); err != nil {
			return nil, err
		}
		if _, err := run(nil, "gocryptfs", "-q", "-extpass", "echo benchpass", c, mnt); err != nil {
			return nil, err
		}
		return &mounted{dir: mnt, backing: c, pid: func() int { return findDaemon("gocryptfs", mnt) }, stop: func() error { return unmount(mnt) }}, nil
	}},
	{name: "securefs", setup: func(e *env, base string) (*mounted, error) {
		c, mnt := filepath.Join(base, "sf-cipher"), filepath.Join(base, "sf-mnt")
		if err := mkdirs(c, mnt); err != nil {
			return nil, err
		}
		if _, err := run(nil, "securefs", "create", "--pass", "benchpass", c); err != nil {
			return nil, err
		}
		if _, err := run(nil, "securefs", "mount", "-b", "--pass", "benchpass", "--log", filepath.Join(base, "securefs.log"), c, mnt); err != nil {
			return nil, err
		}
		// -b returns before the mount is up on some versions.
		for i := 0; i < 100 && !isMounted(mnt); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		return &mounted{dir: mnt, backing: c, pid: func() int { return findDaemon("securefs", mnt) }, stop: func() error { return unmount(mnt) }}, nil
	}},
	{name: "kmsfs", setup: func(e *env, base string) (*mounted, error) {
		return kmsfsSetup(e, base, "kmsfs", nil, nil)
	}},
	// Only with -kmsfs-alt (trials): another kmsfs binary, interleaved
	// with this tree's in every round.
	{name: "kmsfs-alt", setup: func(e *env, base string) (*mounted, error) {
		return kmsfsSetup(e, base, "kmsfs-alt", nil, nil)
	}},
	{name: "kmsfs-kms", kms: true, setup: func(e *env, base string) (*mounted, error) {
		return kmsfsSetup(e, base, "kmsfs-kms", []string{"--kms-key", "alias/kmsfs-bench", "--kms-endpoint", e.kmsEndpoint}, nil)
	}},
}

func kmsfsSetup(e *env, base, name string, initArgs, mountArgs []string) (*mounted, error) {
	c, mnt := filepath.Join(base, name+"-cipher"), filepath.Join(base, name+"-mnt")
	if err := mkdirs(mnt); err != nil {
		return nil, err
	}
	if len(initArgs) == 0 {
		initArgs = []string{"--local-key", filepath.Join(base, name+".key")}
	}
	bin := e.path("kmsfs")
	if name == "kmsfs-alt" {
		bin = e.altBin
	}
	if _, err := run(e.awsEnv, bin, append(append([]string{"init"}, initArgs...), c)...); err != nil {
		return nil, err
	}
	if e.initDone != nil {
		e.initDone()
	}
	cmd, _, err := startReady(e.awsEnv, "kmsfs: mounted", bin, append(append(append([]string{"mount", "--log-level", "warn"}, e.mountArgs...), mountArgs...), c, mnt)...)
	if err != nil {
		return nil, err
	}
	return &mounted{dir: mnt, backing: c, pid: func() int { return cmd.Process.Pid }, stop: stopCmd(cmd, mnt)}, nil
}

func isMounted(dir string) bool {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	return err == nil && len(mounts) > 0
}

// findDaemon returns the process ID of the daemon named comm that serves
// mountpoint mnt (gocryptfs and securefs detach from the runner), or 0.
func findDaemon(comm, mnt string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		c, err := os.ReadFile(filepath.Join(p, "comm"))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		cl, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(cl), "\x00") {
			if arg == mnt {
				pid, _ := strconv.Atoi(filepath.Base(p))
				return pid
			}
		}
	}
	return 0
}
