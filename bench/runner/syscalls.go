package main

import (
	"bufio"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The syscall step counts, with strace on each FUSE daemon, the system
// calls it makes for operations on small files: create and write, cold
// open and read, unlink, and tar x. Counts do not depend on how loaded
// the machine is, which wall-clock figures on a shared machine do.
const syscallStep = "syscalls"

// syscallOps run in this order on syscallFiles files of 5000 B in one
// directory, and then tar x of as many files of 1-16 KiB in 100
// directories (small: its tarball).
var syscallOps = []struct {
	name string
	run  func(e *env, dir, small string, files int) error
}{
	{"create + write 5000 B (fsops create)", func(e *env, dir, small string, files int) error {
		_, err := run(nil, e.path("fsops"), "create", dir, strconv.Itoa(files), "5000")
		return err
	}},
	{"cold open + read (find -exec cat {} +, caches dropped)", func(e *env, dir, small string, files int) error {
		_, err := run(nil, "sh", "-c", "find "+dir+" -type f -exec cat {} + > /dev/null")
		return err
	}},
	{"unlink (rm -rf)", func(e *env, dir, small string, files int) error {
		_, err := run(nil, "rm", "-rf", dir)
		return err
	}},
	{"tar x, 1–16 KiB files in 100 dirs (create, 1–3 writes, 3 setattrs each)", func(e *env, dir, small string, files int) error {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		_, err := run(nil, "tar", "xf", small, "-C", dir)
		return err
	}},
}

// runtimeCalls are the Go runtime's and libc's own: scheduling, memory,
// signals, timers. They are counted apart from the calls made for files.
var runtimeCalls = map[string]bool{
	"futex": true, "nanosleep": true, "clock_nanosleep": true, "epoll_pwait": true, "epoll_wait": true, "epoll_ctl": true,
	"sched_yield": true, "madvise": true, "mmap": true, "munmap": true, "mprotect": true, "brk": true,
	"rt_sigreturn": true, "rt_sigprocmask": true, "rt_sigaction": true, "sigaltstack": true, "tgkill": true,
	"getpid": true, "gettid": true, "clone": true, "clone3": true, "set_robust_list": true, "rseq": true,
	"restart_syscall": true, "exit": true, "exit_group": true, "getrusage": true, "clock_gettime": true,
	"sched_getaffinity": true, "prctl": true, "mlock": true, "munlock": true,
}

// syscallCount is one daemon's calls for one operation, per file.
type syscallCount struct {
	op, system string
	requests   float64            // FUSE requests read from /dev/fuse
	files      map[string]float64 // calls on stored files and directories, by name
	runtime    float64
	transport  float64 // replies, and pipe and dup calls around /dev/fuse
	cpu        float64 // the daemon's CPU seconds, measured without strace
}

// cpuTime is the CPU time pid has used so far, user and system, its
// exited threads included (securefs's come and go): /proc/PID/stat, in
// clock ticks of 10 ms, 5 us per file of 2000.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14, stime 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (c syscallCount) total() float64 {
	t := 0.0
	for _, v := range c.files {
		t += v
	}
	return t
}

// countSyscalls runs syscallOps on tmpfs on every FUSE system and counts
// each daemon's calls.
func countSyscalls(e *env, cfg config, work string, files int) []syscallCount {
	if _, err := exec.LookPath("strace"); err != nil {
		log.Printf("syscall step skipped: %v (apt-get install strace)", err)
		return nil
	}
	small := makeSmallTree(work, files)
	base, cleanup := backingDir("tmpfs", "", work)
	defer cleanup()
	var out []syscallCount
	for _, sys := range systems {
		if sys.name == "native" || sys.name == "kmsfs-kms" || cfg.only != nil && !cfg.only[sys.name] || sys.name == "kmsfs-alt" && e.altBin == "" {
			continue
		}
		dir := filepath.Join(base, sys.name)
		os.MkdirAll(dir, 0o755)
		m, err := sys.setup(e, dir)
		if err != nil {
			log.Printf("syscall step %s: setup: %v", sys.name, err)
			continue
		}
		pid := m.pid()
		first := len(out)
		for i, op := range syscallOps {
			if i == 1 {
				dropCaches()
			}
			c, err := traceOp(pid, func() error { return op.run(e, filepath.Join(m.dir, "sc"), small, files) })
			if err != nil {
				log.Printf("syscall step %s %s: %v", sys.name, op.name, err)
				continue
			}
			c.op, c.system = op.name, sys.name
			c.scale(1 / float64(files))
			out = append(out, c)
		}
		// Again without strace, for the daemon's CPU time per file.
		os.RemoveAll(filepath.Join(m.dir, "sc"))
		for i, op := range syscallOps {
			if i == 1 {
				dropCaches()
			}
			before := cpuTime(pid)
			if err := op.run(e, filepath.Join(m.dir, "sc"), small, files); err != nil {
				log.Printf("syscall step %s %s: %v", sys.name, op.name, err)
				continue
			}
			for j := first; j < len(out); j++ {
				if out[j].op == op.name {
					out[j].cpu = (cpuTime(pid) - before).Seconds() / float64(files)
					log.Printf("syscalls %-10s %-50s %5.1f on files, %4.1f FUSE requests, %4.0f µs CPU", sys.name, op.name, out[j].total(), out[j].requests, out[j].cpu*1e6)
				}
			}
		}
		if err := m.stop(); err != nil {
			log.Printf("%s: %v", sys.name, err)
		}
		os.RemoveAll(dir)
	}
	return out
}

func (c *syscallCount) scale(f float64) {
	for k := range c.files {
		c.files[k] *= f
	}
	c.requests *= f
	c.runtime *= f
	c.transport *= f
}

// traceOp runs op with strace attached to every thread of pid and
// classifies each call by name and by the descriptor it names.
func traceOp(pid int, op func() error) (syscallCount, error) {
	c := syscallCount{files: map[string]float64{}}
	if pid == 0 {
		return c, fmt.Errorf("no daemon process found")
	}
	f, err := os.CreateTemp("", "strace-")
	if err != nil {
		return c, err
	}
	f.Close()
	defer os.Remove(f.Name())
	st := exec.Command("strace", "-f", "-qq", "-y", "-s", "0", "-o", f.Name(), "-p", strconv.Itoa(pid))
	st.Stderr = os.Stderr
	if err := st.Start(); err != nil {
		return c, err
	}
	// strace attaches to every thread before it writes its first line;
	// give it a moment, as a request made before then would go uncounted.
	time.Sleep(time.Second)
	opErr := op()
	time.Sleep(300 * time.Millisecond)
	st.Process.Signal(syscall.SIGINT)
	st.Wait()
	if opErr != nil {
		return c, opErr
	}
	tf, err := os.Open(f.Name())
	if err != nil {
		return c, err
	}
	defer tf.Close()
	sc := bufio.NewScanner(tf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, args, ok := parseStraceLine(sc.Text())
		if !ok {
			continue
		}
		fuse := strings.Contains(args, "</dev/fuse>") || strings.Contains(args, "<pipe:[")
		switch {
		case runtimeCalls[name]:
			c.runtime++
		case fuse && (name == "read" || name == "readv") && !strings.Contains(sc.Text(), "= -1"):
			c.requests++
		case fuse || name == "pipe2" || name == "dup" && strings.Contains(args, "</dev/fuse>"):
			c.transport++
		default:
			c.files[name]++
		}
	}
	return c, sc.Err()
}

// parseStraceLine splits "PID name(args) = ret" (or the start of an
// unfinished call) into the call's name and its arguments; resumed
// halves and signals are skipped.
func parseStraceLine(line string) (name, args string, ok bool) {
	_, rest, found := strings.Cut(strings.TrimLeft(line, " "), " ")
	rest = strings.TrimLeft(rest, " ") // strace pads PIDs to one width
	if !found || strings.HasPrefix(rest, "<...") || strings.HasPrefix(rest, "---") || strings.HasPrefix(rest, "+++") {
		return "", "", false
	}
	i := strings.IndexByte(rest, '(')
	if i <= 0 {
		return "", "", false
	}
	return rest[:i], rest[i:], true
}

// renderSyscalls writes the syscall table: per operation, each system's
// calls per file.
func renderSyscalls(w func(string, ...any), counts []syscallCount, files int) {
	if len(counts) == 0 {
		return
	}
	w("## System calls per file (tmpfs)\n\n")
	w("Counted by `strace -f -y` attached to each daemon while one process works on %d files of 5000 B in one directory, then extracts %d files of 1–16 KiB (bench/runner/syscalls.go); counts are divided by the number of files. \"On files\" are the calls a daemon makes on stored files and directories, by name; FUSE requests are reads of `/dev/fuse`; the rest (replies, the Go runtime's and libc's own calls) is listed apart. CPU is the daemon's (user and system, all threads), per file, in a second pass without strace, from /proc/PID/stat in 10 ms ticks; it varies with the machine's load less than wall-clock time does, but does vary.\n\n", files, files)
	w("| operation | system | FUSE requests | on files | of which | replies and transport | runtime | daemon CPU µs |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range counts {
		type kv struct {
			k string
			v float64
		}
		var parts []kv
		for k, v := range c.files {
			if v >= 0.005 {
				parts = append(parts, kv{k, v})
			}
		}
		sort.Slice(parts, func(i, j int) bool {
			if parts[i].v != parts[j].v {
				return parts[i].v > parts[j].v
			}
			return parts[i].k < parts[j].k
		})
		var s []string
		for _, p := range parts {
			s = append(s, fmt.Sprintf("%s %s", p.k, num(p.v)))
		}
		w("| %s | %s | %s | **%s** | %s | %s | %s | %.0f |\n", c.op, c.system, num(c.requests), num(c.total()), strings.Join(s, ", "), num(c.transport), num(c.runtime), c.cpu*1e6)
	}
	w("\n")
}

func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-0" {
		return "0"
	}
	return s
}
