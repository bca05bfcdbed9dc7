package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/internal/secret/secrettest"
	"github.com/kmsfs/kmsfs/keyring"
	kvolume "github.com/kmsfs/kmsfs/volume"
)

// fileSecrets unwraps the data key of a cipher file with kr (the local
// key, or a branch key) the way the mount does, and derives from it the
// keys the mount derives (docs/FORMAT.md, "Key derivation"; the journal
// record MAC key), so a test knows what to look for. The header may come
// from any reader (an unnamed file is read through the mount's
// descriptor).
func fileSecrets(t *testing.T, kr keyring.Keyring, name string, stored io.Reader) map[string][]byte {
	t.Helper()
	b, err := io.ReadAll(stored)
	if err != nil {
		t.Fatal(err)
	}
	h, err := kvolume.ReadAnyHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	ec := keyring.FileContext(hex.EncodeToString(h.VolumeID[:]), hex.EncodeToString(h.FileID[:]))
	dk, err := kr.Decrypt(context.Background(), kvolume.Entries(h), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	if err := h.Verify(dk.Bytes()); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	out := map[string][]byte{"data key of " + name: bytes.Clone(dk.Bytes())}
	for what, label := range map[string]string{
		"content key":    "kmsfs v1 content key",
		"header MAC key": "kmsfs v1 header mac key",
		"record MAC key": "kmsfs journal record mac key",
	} {
		k, err := hkdf.Key(sha256.New, dk.Bytes(), h.FileID[:], label, 32)
		if err != nil {
			t.Fatal(err)
		}
		out[what+" of "+name] = k
	}
	if h.Version == 2 {
		maps.Copy(out, xaesKeys(t, name, h, b, out["content key of "+name]))
	}
	// The header MAC key is right if it gives the header's MAC.
	slot, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, out["header MAC key of "+name])
	m.Write(slot[:len(slot)-len(h.MAC)])
	if !hmac.Equal(m.Sum(nil), h.MAC[:]) {
		t.Fatalf("%s: the test derives a header MAC key that does not give the header's MAC", name)
	}
	return out
}

// localSecrets are the local key file's bytes and what the mount derives
// from them (docs/FORMAT.md, "Local wrapped key blob"): the HKDF
// pseudorandom key and the key-encryption key.
func localSecrets(t *testing.T, keyFile string) map[string][]byte {
	t.Helper()
	f := readFile(t, keyFile)
	prk, err := hkdf.Extract(sha256.New, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := hkdf.Key(sha256.New, f, nil, "kmsfs local key-encryption key v1", 32)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"local key file": f, "local key PRK": prk, localKEK: kek}
}

const localKEK = "local key-encryption key"

// wordSwapped gives each secret also as SHA-256 (and AES without AES-NI)
// hold it once loaded: as big-endian 32-bit words in little-endian
// memory.
func wordSwapped(secrets map[string][]byte) map[string][]byte {
	return secrettest.WordSwapped(secrets)
}

func localKeyFile(t *testing.T, v *volume) string {
	t.Helper()
	var cfg struct {
		Keyrings []struct {
			KeyFile string `json:"key_file"`
		} `json:"keyrings"`
	}
	b := readFile(t, filepath.Join(v.Dir, "kmsfs.json"))
	if err := json.Unmarshal(b, &cfg); err != nil || len(cfg.Keyrings) == 0 {
		t.Fatalf("kmsfs.json: %v", err)
	}
	return cfg.Keyrings[0].KeyFile
}

var secretsMetricsLine = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

// liveKeys scrapes kmsfs_live_keys from the mount's metrics endpoint.
func scrapeLiveKeys(t *testing.T, m *mount) int {
	t.Helper()
	match := secretsMetricsLine.FindStringSubmatch(m.log.String())
	if match == nil {
		t.Fatal("the mount did not log its metrics address")
	}
	resp, err := http.Get("http://" + match[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "kmsfs_live_keys "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("no kmsfs_live_keys in the metrics:\n%s", body)
	return 0
}

// waitScrapedLiveKeys waits for kmsfs_live_keys to reach want (the kernel
// sends RELEASE after close(2) returns, and a key a file this mount wrote
// is kept a second past its close, fs/outage.go): at most 30 s, a bound
// for a loaded CI machine, not a measure.
func waitScrapedLiveKeys(t *testing.T, m *mount, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for scrapeLiveKeys(t, m) != want {
		if time.Now().After(deadline) {
			t.Fatalf("kmsfs_live_keys is %d 30s after the files were closed, want %d; the mount's key metrics:\n%s",
				scrapeLiveKeys(t, m), want, keyMetrics(t, m))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// keyMetrics is the mount's kmsfs_ metrics of keys and files, for a
// failure message.
func keyMetrics(t *testing.T, m *mount) string {
	t.Helper()
	match := secretsMetricsLine.FindStringSubmatch(m.log.String())
	if match == nil {
		return "(no metrics address)"
	}
	resp, err := http.Get("http://" + match[1] + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "kmsfs_") && (strings.Contains(line, "key") || strings.Contains(line, "open") || strings.Contains(line, "outage")) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// memRegion is one mapping of a process.
type memRegion struct {
	start, end uint64
	desc       string
	locked     bool
}

// regions lists a process's readable private mappings, with whether each
// is mlocked (from smaps).
func regions(t *testing.T, pid int) []memRegion {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []memRegion
	sc := bufio.NewScanner(f)
	header := regexp.MustCompile(`^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$`)
	for sc.Scan() {
		line := sc.Text()
		if m := header.FindStringSubmatch(line); m != nil {
			start, _ := strconv.ParseUint(m[1], 16, 64)
			end, _ := strconv.ParseUint(m[2], 16, 64)
			if strings.HasPrefix(m[3], "r") && !strings.Contains(m[4], "[vvar") && !strings.Contains(m[4], "[vsyscall]") {
				out = append(out, memRegion{start: start, end: end, desc: m[4]})
			} else {
				out = append(out, memRegion{desc: "skip"})
			}
			continue
		}
		if v, ok := strings.CutPrefix(line, "Locked:"); ok && len(out) > 0 {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			out[len(out)-1].locked = kb > 0
		}
	}
	var readable []memRegion
	for _, r := range out {
		if r.desc != "skip" {
			readable = append(readable, r)
		}
	}
	return readable
}

// findInProcess searches the memory of pid for each needle and returns
// every place it was found: address, mapping, and "(mlocked)" if locked.
func findInProcess(t *testing.T, pid int, needles map[string][]byte) map[string][]string {
	t.Helper()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	found := map[string][]string{}
	for _, r := range regions(t, pid) {
		buf := make([]byte, r.end-r.start)
		n, _ := mem.ReadAt(buf, int64(r.start))
		buf = buf[:n]
		for name, needle := range needles {
			for off := 0; ; {
				i := bytes.Index(buf[off:], needle)
				if i < 0 {
					break
				}
				where := fmt.Sprintf("%#x in %#x-%#x %q", r.start+uint64(off+i), r.start, r.end, r.desc)
				if r.locked {
					where += " (mlocked)"
				}
				found[name] = append(found[name], where)
				off += i + 1
			}
		}
	}
	return found
}

// TestSecretsInMemory: the mount process cannot dump core and is not
// dumpable; while a file is open its data key is in locked memory; once
// every file is closed (live keys 0) no data key, no key derived from
// one (content, header MAC and record MAC keys), and neither the local
// key file's bytes nor its HKDF pseudorandom key is anywhere in the
// process's memory, locked or not; the local key-encryption key is only
// in locked memory (it is kept there for the mount's life: every open
// unwraps with it). Rounds of different work (files kept open, partial
// writes and truncates that go through the journal, O_TMPFILE files)
// each end in a scan, to catch copies left on stacks as well as in the
// heap. The debug log of the whole run contains neither the local key
// nor any data key, in raw, hex or base64 form. (A KMS volume also
// leaves base64 copies in the AWS SDK's buffers: THREAT_MODEL.md,
// "Limits"; not tested here.)
func TestSecretsInMemory(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v, "--key-pool", "0", "--metrics-addr", "127.0.0.1:0")
	pid := m.cmd.Process.Pid

	limits := string(readFile(t, fmt.Sprintf("/proc/%d/limits", pid)))
	if !regexp.MustCompile(`Max core file size\s+0\s+0`).MatchString(limits) {
		t.Errorf("the mount may dump core:\n%s", limits)
	}
	if !strings.Contains(m.log.String(), "dumpable=0") {
		t.Errorf("the mount did not report itself non-dumpable (PR_GET_DUMPABLE)")
	}

	keyFile := localKeyFile(t, v)
	local, err := keyring.LoadLocal(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	needles := localSecrets(t, keyFile)
	maps.Copy(needles, wordSwapped(needles))
	maps.Copy(needles, aesRoundKeys(t, needles))
	cipherFile := func(name string) map[string][]byte {
		f, err := os.Open(filepath.Join(v.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return fileSecrets(t, local, name, f)
	}

	rounds := []struct {
		name string
		// run leaves files open and returns them with the secrets of
		// each.
		run func(t *testing.T) ([]*os.File, map[string][]byte)
	}{
		{"files written, read and kept open", func(t *testing.T) ([]*os.File, map[string][]byte) {
			var open []*os.File
			secrets := map[string][]byte{}
			for i := range 6 {
				name := fmt.Sprintf("f%d", i)
				open = append(open, writtenAndOpen(t, m, name, i))
				maps.Copy(secrets, cipherFile(name))
			}
			return open, secrets
		}},
		{"partial writes, rewrites and truncates", func(t *testing.T) ([]*os.File, map[string][]byte) {
			var open []*os.File
			secrets := map[string][]byte{}
			for i := range 12 {
				name := fmt.Sprintf("g%d", i)
				f, err := os.OpenFile(m.path(name), os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range []struct {
					off int64
					n   int
				}{{0, 3*4096 + 100}, {4000, 200}, {100, 1}, {9000, 5000}, {int64(20000 + i), 7}} {
					if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, w.n), w.off); err != nil {
						t.Fatal(err)
					}
				}
				for _, size := range []int64{6000, 4096, 30000, int64(777 + i)} {
					if err := f.Truncate(size); err != nil {
						t.Fatal(err)
					}
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				if _, err := f.ReadAt(make([]byte, 1000), 0); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				open = append(open, f)
				maps.Copy(secrets, cipherFile(name))
			}
			// A file opened twice shares one key; a file reopened after
			// its last close unwraps again.
			again, err := os.Open(m.path("f0"))
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, again)
			return open, secrets
		}},
		{"O_TMPFILE files, one linked, one left unnamed", func(t *testing.T) ([]*os.File, map[string][]byte) {
			var open []*os.File
			secrets := map[string][]byte{}
			for i := range 2 {
				fd, err := unix.Open(m.Dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
				if err != nil {
					t.Fatalf("O_TMPFILE: %v", err)
				}
				f := os.NewFile(uintptr(fd), "tmpfile")
				open = append(open, f)
				if _, err := f.Write(bytes.Repeat([]byte{0x5a}, 5000)); err != nil {
					t.Fatal(err)
				}
				if _, err := f.ReadAt(make([]byte, 5000), 0); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					if err := unix.Linkat(fd, "", unix.AT_FDCWD, m.path("linked-tmpfile"), unix.AT_EMPTY_PATH); err != nil {
						t.Fatalf("link an O_TMPFILE file: %v", err)
					}
					maps.Copy(secrets, cipherFile("linked-tmpfile"))
				}
			}
			// The unnamed one: read its header through the mount's
			// descriptor of it.
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				t.Fatal(err)
			}
			unnamed := 0
			for _, e := range fds {
				p := fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())
				target, err := os.Readlink(p)
				if err != nil || !strings.HasPrefix(target, v.Dir+"/") || !strings.HasSuffix(target, " (deleted)") {
					continue
				}
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				maps.Copy(secrets, fileSecrets(t, local, "unnamed tmpfile", f))
				f.Close()
				unnamed++
				break
			}
			if unnamed == 0 {
				t.Fatal("the mount holds no descriptor of the unnamed O_TMPFILE file")
			}
			return open, secrets
		}},
	}

	for _, round := range rounds {
		t.Run(round.name, func(t *testing.T) {
			open, secrets := round.run(t)
			maps.Copy(needles, secrets)
			maps.Copy(needles, wordSwapped(secrets))
			maps.Copy(needles, aesRoundKeys(t, secrets))
			// While the files are open, their keys are in memory, which
			// proves the search and the test's derivation right: a data
			// key in locked memory, the content key in the AES-GCM state
			// (the key schedule starts with it), the record MAC key in
			// the file's cipher. (fileSecrets checked the header MAC key
			// against the header.)
			found := findInProcess(t, pid, secrets)
			xaes, xaesFound := 0, 0
			for name := range secrets {
				if strings.HasPrefix(name, "XAES key") {
					xaes++
					if len(found[name]) > 0 {
						xaesFound++
					}
				}
			}
			// A file's derived XAES keys (format version 3) are held
			// while it is open only as its reads and writes need them.
			if xaes > 0 && xaesFound == 0 {
				t.Errorf("none of the %d XAES-256-GCM keys of the open files is in the mount's memory: is the test's derivation wrong?", xaes)
			}
			t.Logf("%d XAES-256-GCM derived keys, %d of them in memory while their files are open", xaes, xaesFound)
			for name := range secrets {
				switch {
				case strings.HasPrefix(name, "data key"):
					locked := false
					for _, w := range found[name] {
						locked = locked || strings.HasSuffix(w, "(mlocked)")
					}
					if !locked {
						t.Errorf("%s is not in the mount's locked memory while the file is open (found: %v)", name, found[name])
					}
				case strings.HasPrefix(name, "content key"), strings.HasPrefix(name, "record MAC key"):
					if len(found[name]) == 0 {
						t.Errorf("%s is not in the mount's memory while the file is open: is the test's derivation wrong?", name)
					}
				}
			}
			for _, f := range open {
				f.Close()
			}
			waitScrapedLiveKeys(t, m, 0)
			// Every secret of every round so far: none is left anywhere,
			// but the KEK in locked memory.
			found = findInProcess(t, pid, needles)
			kekLocked := false
			for name, where := range found {
				for _, w := range where {
					if name == localKEK && strings.HasSuffix(w, "(mlocked)") {
						kekLocked = true
						continue
					}
					t.Errorf("%s is in the mount's memory after every file was closed: at %s", name, w)
				}
			}
			if !kekLocked {
				t.Errorf("the local key-encryption key is not in the mount's locked memory")
			}
		})
	}

	// The log of the whole run: no key in any encoding.
	logText := m.log.String()
	for name, k := range needles {
		for _, enc := range []string{string(k), hex.EncodeToString(k), strings.ToUpper(hex.EncodeToString(k)), base64.StdEncoding.EncodeToString(k), base64.RawURLEncoding.EncodeToString(k)} {
			if strings.Contains(logText, enc) {
				t.Errorf("the mount's debug log contains the %s", name)
			}
		}
	}
}

// xaesKeys derives the XAES-256-GCM key of every key nonce among the
// stored blocks of a header version 2 file (docs/FORMAT.md, "Stored
// blocks"), checking each by opening a block with it.
func xaesKeys(t *testing.T, name string, h *blockcipher.Header, file, contentKey []byte) map[string][]byte {
	t.Helper()
	l, err := h.Layout()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for i, off := uint64(0), l.DataOff(); off < int64(len(file)); i, off = i+1, off+l.StoredBlockSize() {
		blk := file[off:min(off+l.StoredBlockSize(), int64(len(file)))]
		if len(blk) <= 40 || bytes.Equal(blk[:24], make([]byte, 24)) {
			continue // a hole
		}
		what := fmt.Sprintf("XAES key %x of %s", blk[:12], name)
		if out[what] != nil {
			continue
		}
		kx := xaesDerive(t, contentKey, blk[:12])
		block, _ := aes.NewCipher(kx)
		gcm, _ := cipher.NewGCM(block)
		aad := binary.BigEndian.AppendUint64(bytes.Clone(h.FileID[:]), i)
		_, err0 := gcm.Open(nil, blk[12:24], blk[24:], append(bytes.Clone(aad), 0))
		_, err1 := gcm.Open(nil, blk[12:24], blk[24:], append(aad, 1))
		if err0 != nil && err1 != nil {
			continue // torn or shortened: its key is the one of another block, or none
		}
		out[what] = kx
	}
	return out
}

// xaesDerive is C2SP XAES-256-GCM's key derivation, written out again
// from the spec: K1 = AES_K(0) doubled in GF(2^128); Kx = AES_K(M1 xor K1)
// || AES_K(M2 xor K1), Mi = 0x00 || i || "X" || 0x00 || n.
func xaesDerive(t *testing.T, key, n []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	k1 := make([]byte, 16)
	b.Encrypt(k1, k1)
	carry := k1[0] >> 7
	for i := range 15 {
		k1[i] = k1[i]<<1 | k1[i+1]>>7
	}
	k1[15] <<= 1
	if carry == 1 {
		k1[15] ^= 0x87
	}
	kx := make([]byte, 32)
	for i := range 2 {
		m := append([]byte{0, byte(i + 1), 'X', 0}, n...)
		for j := range m {
			m[j] ^= k1[j]
		}
		b.Encrypt(kx[16*i:], m)
	}
	return kx
}

// aesRoundKeys gives, for each secret that is an AES key (content,
// XAES, key-encryption and branch wrapping keys), every two consecutive
// round keys of its AES-256 schedule but the first two (the key itself),
// as crypto/aes holds them and word-swapped: any such pair gives the key
// back, and AES-GCM holds several in vector registers at once.
func aesRoundKeys(t *testing.T, secrets map[string][]byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for name, key := range secrets {
		if len(key) != 32 || strings.HasPrefix(name, "word-swapped") || !(strings.HasPrefix(name, "content key") ||
			strings.HasPrefix(name, "XAES key") || name == localKEK || strings.HasPrefix(name, "branch wrapping key")) {
			continue
		}
		pairs, err := secrettest.RoundKeyPairs(name, key)
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(out, pairs)
		maps.Copy(out, wordSwapped(pairs))
	}
	return out
}

// writtenAndOpen writes file name of the mount (10000+i bytes of byte i),
// opens it and reads it through, and returns it open.
func writtenAndOpen(t *testing.T, m *mount, name string, i int) *os.File {
	t.Helper()
	writeFile(t, m.path(name), bytes.Repeat([]byte{byte(i)}, 10000+i))
	f, err := os.Open(m.path(name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(f); err != nil {
		t.Fatal(err)
	}
	return f
}

// branchSecrets unwraps the branch key branchID (hex) of a local-key
// branch-mode volume as the mount does, and returns it and its keyring.
func branchSecrets(t *testing.T, local keyring.Keyring, dir, branchID string) ([]byte, *keyring.Branch) {
	t.Helper()
	vol, err := kvolume.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var id [blockcipher.IDSize]byte
	if n, err := hex.Decode(id[:], []byte(branchID)); err != nil || n != len(id) {
		t.Fatalf("branch ID %q: %v", branchID, err)
	}
	h, err := vol.ReadBranch(id)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := local.Decrypt(context.Background(), kvolume.Entries(h), vol.BranchContext(id))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Verify(dk.Bytes()); err != nil {
		t.Fatalf("branch key %s: %v", branchID, err)
	}
	return bytes.Clone(dk.Bytes()), keyring.NewBranch(branchID, dk)
}

// TestSecretsInMemoryBranchKeys: in a branch-mode volume (local key) the
// branch key is in locked memory while the mount holds it (its TTL), and
// only there; once every file is closed, no file's data key, no key
// derived from one, and no file's wrapping key (derived from the branch
// key and the file's encryption context, docs/FORMAT.md, "Branch keys")
// is anywhere in the process's memory, locked or not.
func TestSecretsInMemoryBranchKeys(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil, "--branch-keys")
	m := mountVolume(t, v, "--metrics-addr", "127.0.0.1:0")
	pid := m.cmd.Process.Pid
	keyFile := localKeyFile(t, v)
	local, err := keyring.LoadLocal(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	needles := localSecrets(t, keyFile)

	var open []*os.File
	var branchKey []byte
	var branch *keyring.Branch
	for i := range 6 {
		name := fmt.Sprintf("f%d", i)
		open = append(open, writtenAndOpen(t, m, name, i))
		if branch == nil {
			branchKey, branch = branchSecrets(t, local, v.Dir, branchIDOf(t, filepath.Join(v.Dir, name)))
			defer branch.Wipe()
		}
		stored, err := os.Open(filepath.Join(v.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		secrets := fileSecrets(t, branch, name, stored)
		stored.Close()
		h, err := kvolume.ReadAnyHeader(bytes.NewReader(readFile(t, filepath.Join(v.Dir, name))), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		ec := keyring.FileContext(hex.EncodeToString(h.VolumeID[:]), hex.EncodeToString(h.FileID[:]))
		wk, err := hkdf.Key(sha256.New, branchKey, ec.Canonical(), "kmsfs branch wrap key v1", 32)
		if err != nil {
			t.Fatal(err)
		}
		secrets["branch wrapping key of "+name] = wk
		maps.Copy(needles, secrets)
	}
	needles["branch key"] = branchKey
	maps.Copy(needles, aesRoundKeys(t, needles))
	maps.Copy(needles, wordSwapped(needles))

	found := findInProcess(t, pid, needles)
	for name := range needles {
		if strings.HasPrefix(name, "data key") || name == "branch key" {
			locked := false
			for _, w := range found[name] {
				locked = locked || strings.HasSuffix(w, "(mlocked)")
			}
			if !locked {
				t.Errorf("%s is not in the mount's locked memory while the files are open (found: %v)", name, found[name])
			}
		}
	}
	for _, f := range open {
		f.Close()
	}
	waitScrapedLiveKeys(t, m, 1) // the branch key, held for its TTL
	for name, where := range findInProcess(t, pid, needles) {
		for _, w := range where {
			if (name == localKEK || name == "branch key") && strings.HasSuffix(w, "(mlocked)") {
				continue
			}
			t.Errorf("%s is in the mount's memory after every file was closed: at %s", name, w)
		}
	}
}
