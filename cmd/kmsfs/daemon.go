package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Daemonizing: kmsfs mount -d starts itself again without a terminal and
// waits until that child has mounted (or failed), so the exit status says
// whether the mount is up.

// readyEnv names the descriptor a daemonized child reports readiness on.
const readyEnv = "KMSFS_READY_FD"

// daemonChildEnv marks the process daemonize started.
const daemonChildEnv = "KMSFS_DAEMON_CHILD"

// daemonize runs args (the mount command, -d included) again in a new
// session and waits until the child reports the mount ready (or exits).
// Without --log-file the child logs to syslog; on a machine with none
// (most containers have no /dev/log) it logs to a file instead, which
// daemonize names, rather than dropping every line, tamper warnings
// included.
func daemonize(args []string, stdout io.Writer, logFile, mountpoint string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fallback := ""
	if logFile == "" && !haveSyslog() {
		path, err := fallbackLog(mountpoint)
		if err != nil {
			return fail(exitUsage, "-d: this machine has no syslog (/dev/log), and %v: give --log-file FILE", err)
		}
		args, fallback = append([]string{args[0], "--log-file", path}, args[1:]...), path
	}
	cmd := exec.Command(exe, args...)
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
		if fallback != "" {
			fmt.Fprintf(stdout, "kmsfs: no syslog on this machine: logging to %s\n", fallback)
		}
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

// haveSyslog reports whether the syslog daemon takes messages here.
func haveSyslog() bool {
	w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "kmsfs")
	if err != nil {
		return false
	}
	w.Close()
	return true
}

// fallbackLog is the log file of a daemonized mount on a machine without
// syslog: $XDG_STATE_HOME/kmsfs, else ~/.local/state/kmsfs, else, for root
// without a home, /var/log/kmsfs; named after the mountpoint.
func fallbackLog(mountpoint string) (string, error) {
	dir := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(dir) {
		dir = ""
		if home, err := os.UserHomeDir(); err == nil {
			dir = filepath.Join(home, ".local", "state")
		} else if os.Geteuid() == 0 {
			dir = "/var/log"
		}
	}
	if dir == "" {
		return "", errors.New("no home directory for a log file")
	}
	dir = filepath.Join(dir, "kmsfs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(dir, fmt.Sprintf("mount-%s-%x.log", filepath.Base(abs), sum[:4])), nil
}

// reportReady tells a waiting daemonize parent that the mount is up,
// with the line it prints (one line), and reports whether there was one.
func reportReady(line string) bool {
	fdStr := os.Getenv(readyEnv)
	if fdStr == "" {
		return false
	}
	fd, err := strconv.Atoi(fdStr)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), "ready")
	fmt.Fprintln(f, "ok "+strings.ReplaceAll(line, "\n", " "))
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

// daemonReady finishes daemonizing once the mount is up: it tells the
// waiting parent, moves the log to syslog unless it goes to a --log-file
// (the parent's stderr may go away), and lets go of the parent's stdio.
// It returns what closes the syslog writer. Outside a daemonized child it
// does nothing. line is what the parent prints.
func daemonReady(logOut *swapWriter, logFile, line string) (closeLog func()) {
	closeLog = func() {}
	if reportReady(line) && logFile == "" {
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "kmsfs"); err == nil {
			logOut.set(w)
			closeLog = func() { w.Close() }
		} else {
			logOut.set(io.Discard)
		}
	}
	if os.Getenv(daemonChildEnv) != "" {
		detachStdio()
	}
	return closeLog
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
