package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotify: under a unit of Type=notify, systemd hands kmsfs a
// datagram socket in $NOTIFY_SOCKET. kmsfs sends READY=1 (with a STATUS=)
// once the mount answers, and STOPPING=1 when it unmounts: after kmsfs
// unmount (a path socket) and on SIGTERM, as systemctl stop sends (an
// abstract socket, as systemd uses).
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	for _, c := range []struct {
		name     string
		abstract bool
		stop     func(t *testing.T, cmd *exec.Cmd, mnt string)
	}{
		{"path socket, kmsfs unmount", false, func(t *testing.T, _ *exec.Cmd, mnt string) {
			if _, errOut, code := run(t, nil, "unmount", mnt); code != 0 {
				t.Fatalf("kmsfs unmount: exit %d: %s", code, errOut)
			}
		}},
		{"abstract socket, SIGTERM", true, func(t *testing.T, cmd *exec.Cmd, _ string) {
			cmd.Process.Signal(syscall.SIGTERM)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			name := filepath.Join(t.TempDir(), "notify")
			if c.abstract {
				b := make([]byte, 8)
				rand.Read(b)
				name = "@kmsfs-test-" + hex.EncodeToString(b)
			}
			sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()

			v := newVolume(t, nil)
			mnt := cliDaemonMountpoint(t, true)
			var log syncBuffer
			cmd := exec.Command(kmsfsBin, "mount", "--log-level", "debug", v.Dir, mnt)
			cmd.Env = append(append(os.Environ(), v.Env...), "NOTIFY_SOCKET="+name)
			cmd.Stderr = &log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()

			msg := readNotify(t, sock, &log)
			// Mounted and answering the moment READY=1 arrives.
			if !cliMounted(t, mnt) {
				t.Fatalf("READY=1 arrived before %s was mounted", mnt)
			}
			if _, err := os.ReadDir(mnt); err != nil {
				t.Fatalf("READY=1 arrived, but the mount does not answer: %v", err)
			}
			if !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=Mounted "+v.Dir+" on "+mnt) {
				t.Errorf("first notification %q, want READY=1 and STATUS=Mounted %s on %s", msg, v.Dir, mnt)
			}
			writeFile(t, filepath.Join(mnt, "f"), []byte("kept"))

			c.stop(t, cmd, mnt)
			if msg := readNotify(t, sock, &log); !strings.HasPrefix(msg, "STOPPING=1") {
				t.Errorf("notification after the unmount %q, want STOPPING=1", msg)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("kmsfs mount exited with %v\n%s", err, log.String())
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("kmsfs mount did not exit within 30s of its unmount")
			}
			if w := warnLine.FindAllString(log.String(), 5); len(w) > 0 {
				t.Errorf("kmsfs logged warnings:\n%s", strings.Join(w, "\n"))
			}
			sock.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := sock.ReadFromUnix(make([]byte, 4096)); err == nil {
				t.Errorf("a notification after STOPPING=1: %d bytes", n)
			}
			m := mountVolume(t, v)
			if got := readFile(t, m.path("f")); !bytes.Equal(got, []byte("kept")) {
				t.Errorf("f reads %q after the unmount", got)
			}
		})
	}
}

// readNotify waits (bounded) for the next datagram on sock.
func readNotify(t *testing.T, sock *net.UnixConn, log *syncBuffer) string {
	t.Helper()
	sock.SetReadDeadline(time.Now().Add(readyTimeout))
	buf := make([]byte, 4096)
	n, _, err := sock.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no notification from kmsfs: %v\n%s", err, log.String())
	}
	return string(buf[:n])
}

// TestSystemdUnitFile: the unit in docs/ runs kmsfs in the foreground as
// Type=notify, and systemd-analyze (where installed) finds nothing wrong
// with it.
func TestSystemdUnitFile(t *testing.T) {
	t.Parallel()
	unit := string(readFile(t, filepath.Join("..", "docs", "kmsfs@.service")))
	if !strings.Contains(unit, "\nType=notify\n") {
		t.Error("docs/kmsfs@.service is not Type=notify")
	}
	var execStart string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = v
		}
	}
	if f := strings.Fields(execStart); len(f) < 2 || filepath.Base(f[0]) != "kmsfs" || f[1] != "mount" || strings.Contains(execStart, " -d") || strings.Contains(execStart, "--daemon") {
		t.Errorf("ExecStart=%s: want kmsfs mount in the foreground", execStart)
	}
	requireTools(t, "systemd-analyze") // CI (KMSFS_REQUIRE_FUSE=1) must check the unit's syntax
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	local := strings.ReplaceAll(unit, strings.Fields(execStart)[0], kmsfsBin)
	if err := os.WriteFile(filepath.Join(dir, "kmsfs@.service"), []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", filepath.Join(dir, "kmsfs@vault.service"))
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=warning")
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
