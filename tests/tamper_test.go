package tests

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// Bad bytes in CIPHERDIR. Files are written through one mount, the cipher
// files are damaged while nothing is mounted, and a fresh mount (no page
// cache, no cached sizes) reads them. Block reads use O_DIRECT, so each
// read(2) is exactly one FUSE READ of the block asked for: no readahead
// touches a neighbouring block, and the warnings can be counted exactly.
// Every damaged block must fail with EIO and one WARN naming the file and
// the block; every other block and file must read back its own bytes.

// volumeGeometry reads header_size, block_size, volume_id and the local
// key file from a volume's kmsfs.json.
type volumeGeometry struct {
	FormatVersion int    `json:"format_version"`
	HeaderSize    int    `json:"header_size"`
	BlockSize     int    `json:"block_size"`
	VolumeID      string `json:"volume_id"`
	Keyrings      []struct {
		Kind    string `json:"kind"`
		KeyFile string `json:"key_file"`
	} `json:"keyrings"`
}

func geometryOf(t testing.TB, v *volume) volumeGeometry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.Dir, "kmsfs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g volumeGeometry
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if g.HeaderSize < 256 || g.BlockSize < 512 {
		t.Fatalf("kmsfs.json: header size %d, block size %d", g.HeaderSize, g.BlockSize)
	}
	return g
}

// overhead is what docs/FORMAT.md says a stored block adds to its
// plaintext: 28 bytes in a volume of format version 1 or 2 (header
// version 1), 40 in version 3 (header version 2).
func (g volumeGeometry) overhead() int64 {
	if g.FormatVersion < 3 {
		return 28
	}
	return 40
}

// stored is the stored block size, blockOff where block i starts.
func (g volumeGeometry) stored() int64 { return int64(g.BlockSize) + g.overhead() }
func (g volumeGeometry) blockOff(i int) int64 {
	return g.dataOff() + int64(i)*g.stored()
}

// dataOff is where block 0 starts: after the header and the journal area
// (two slots of 24+B+28 bytes, or of 33+B+40 from format version 3,
// rounded up to 16, docs/FORMAT.md).
func (g volumeGeometry) dataOff() int64 {
	head := int64(33)
	if g.FormatVersion < 3 {
		head = 24
	}
	return int64(g.HeaderSize) + 2*((head+g.stored()+15)/16*16)
}

// plainSize is docs/FORMAT.md's plain size of a stored size (for a damaged
// size, the readable part).
func (g volumeGeometry) plainSize(stored int64) int64 {
	if stored <= g.dataOff() {
		return 0
	}
	p := stored - g.dataOff()
	n, r := p/g.stored()*int64(g.BlockSize), p%g.stored()
	if r > g.overhead() {
		n += r - g.overhead()
	}
	return n
}

// cipherFile edits one stored file.
type cipherFile struct {
	t    testing.TB
	path string
}

func (c cipherFile) read() []byte {
	c.t.Helper()
	b, err := os.ReadFile(c.path)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c cipherFile) write(b []byte) {
	c.t.Helper()
	if err := os.WriteFile(c.path, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c cipherFile) flip(off int64) {
	c.t.Helper()
	b := c.read()
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0x10
	c.write(b)
}

func (c cipherFile) truncate(size int64) {
	c.t.Helper()
	if err := os.Truncate(c.path, size); err != nil {
		c.t.Fatal(err)
	}
}

func (c cipherFile) appendBytes(p []byte) {
	c.t.Helper()
	c.write(append(c.read(), p...))
}

// headerEntry returns where the first wrapped key entry's key ID and blob
// lie in a header (docs/FORMAT.md, "Header slot"), and the used size.
func headerEntry(t testing.TB, h []byte) (idOff, idLen, blobOff, blobLen, used int) {
	t.Helper()
	if h[82] != 1 {
		t.Fatalf("header has %d wrapped keys, the test expects 1", h[82])
	}
	idLen = int(binary.BigEndian.Uint16(h[84:]))
	idOff = 86
	blobLen = int(binary.BigEndian.Uint16(h[idOff+idLen:]))
	blobOff = idOff + idLen + 2
	return idOff, idLen, blobOff, blobLen, blobOff + blobLen
}

// directReader opens a file of the mount with O_DIRECT.
type directReader struct {
	fd  int
	buf []byte // page aligned
}

func openDirect(path string, bs int) (*directReader, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	buf, err := unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &directReader{fd: fd, buf: buf}, nil
}

// block reads block i: one FUSE READ.
func (d *directReader) block(i int) ([]byte, error) {
	n, err := unix.Pread(d.fd, d.buf, int64(i)*int64(len(d.buf)))
	if err != nil {
		return nil, err
	}
	return bytes.Clone(d.buf[:n]), nil
}

func (d *directReader) close() {
	unix.Munmap(d.buf)
	unix.Close(d.fd)
}

var logMarkers atomic.Int64

// flushMountLog makes the mount log a line after everything it did so far (a
// lookup of a name that does not exist, at debug level) and waits until
// that line is in m.log: every line logged before is there too.
func flushMountLog(t testing.TB, m *mount) {
	t.Helper()
	name := fmt.Sprintf("log-marker-%d", logMarkers.Add(1))
	if _, err := os.Lstat(m.path(name)); !os.IsNotExist(err) {
		t.Fatalf("lstat %s: %v, want ENOENT", name, err)
	}
	pollUntil(t, 5*time.Second, "the mount's log to catch up", func() bool {
		return strings.Contains(m.log.String(), "path="+name)
	})
}

type tamperCase struct {
	name   string
	size   int // plaintext bytes written
	tamper func(c cipherFile)
	// openFails: the header is damaged, open fails with EIO.
	openFails bool
	// bad blocks fail with EIO; good blocks read back their original
	// bytes (up to the size the mount reports).
	bad, good []int
	// gap, if set, explains a failure of this case: a product gap the
	// test keeps visible.
	gap string
}

func TestTamper(t *testing.T) {
	t.Parallel()
	vol, g, cases, orig := tamperedVolume(t)
	cipher := func(name string) cipherFile { return cipherFile{t: t, path: filepath.Join(vol.Dir, name)} }
	m := mountVolume(t, vol)
	m.AllowWarnings = true
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkTampered(t, m, g, tc, orig[tc.name], cipher(tc.name))
		})
	}
	t.Run("untouched files", func(t *testing.T) {
		for _, name := range []string{"bystander", "donor"} {
			if got := readFile(t, m.path(name)); !bytes.Equal(got, orig[name]) {
				t.Errorf("%s: reads back different bytes", name)
			}
		}
		flushMountLog(t, m)
		for _, name := range []string{"bystander", "donor"} {
			if w := warnLinesFor(m, name); len(w) != 0 {
				t.Errorf("WARN lines name the untouched file %s:\n%s", name, strings.Join(w, "\n"))
			}
		}
	})
}

// tamperedVolume writes the tamper cases' files (and two untouched ones,
// "bystander" and "donor") through a mount, damages them while nothing
// is mounted, and returns the volume, its geometry, the cases and every
// file's original plaintext. TestTamper reads them through a mount,
// TestFsckTamper checks them offline.
func tamperedVolume(t *testing.T) (*volume, volumeGeometry, []tamperCase, map[string][]byte) {
	vol := newVolume(t, nil)
	g := geometryOf(t, vol)
	if len(g.Keyrings) != 1 || g.Keyrings[0].KeyFile == "" {
		t.Fatalf("want a volume with one local key, got %+v", g.Keyrings)
	}
	// A second volume under the same key file: its headers carry a
	// wrapped key this volume's keyring trusts, but another volume ID.
	other := newVolume(t, nil, "--local-key", g.Keyrings[0].KeyFile)
	if og := geometryOf(t, other); og.HeaderSize != g.HeaderSize || og.BlockSize != g.BlockSize {
		t.Fatalf("the two volumes differ in geometry: %+v and %+v", g, og)
	}
	bs := g.BlockSize
	H := int64(g.HeaderSize)
	sb := g.stored()
	cipher := func(name string) cipherFile { return cipherFile{t: t, path: filepath.Join(vol.Dir, name)} }
	otherHeader := func() []byte { return cipherFile{t: t, path: filepath.Join(other.Dir, "other")}.read()[:H] }
	replaceHeader := func(c cipherFile, h []byte) {
		b := c.read()
		copy(b, h)
		c.write(b)
	}
	const full4 = 4 * 4096 // four full blocks at the default block size
	if bs != 4096 {
		t.Fatalf("block size %d: the cases assume the default 4096", bs)
	}
	size := 4*bs + 1000 // blocks 0-3 full, block 4 partial

	cases := []tamperCase{
		{name: "flip-nonce", size: size, tamper: func(c cipherFile) { c.flip(g.blockOff(1) + 3) },
			bad: []int{1}, good: []int{0, 2, 3, 4}},
		{name: "flip-ciphertext", size: size, tamper: func(c cipherFile) { c.flip(g.blockOff(2) + 12 + 100) },
			bad: []int{2}, good: []int{0, 1, 3, 4}},
		{name: "flip-tag", size: size, tamper: func(c cipherFile) { c.flip(g.blockOff(3) + sb - 1) },
			bad: []int{3}, good: []int{0, 1, 2, 4}},
		{name: "flip-final-block", size: size, tamper: func(c cipherFile) { c.flip(-1) },
			bad: []int{4}, good: []int{0, 1, 2, 3}},
		{name: "swap-blocks", size: size, tamper: func(c cipherFile) {
			b := c.read()
			b0 := bytes.Clone(b[g.blockOff(0):g.blockOff(1)])
			copy(b[g.blockOff(0):], b[g.blockOff(2):g.blockOff(3)])
			copy(b[g.blockOff(2):], b0)
			c.write(b)
		}, bad: []int{0, 2}, good: []int{1, 3, 4}},
		{name: "block-from-other-file", size: size, tamper: func(c cipherFile) {
			donor := cipher("donor").read()
			b := c.read()
			copy(b[g.blockOff(1):g.blockOff(2)], donor[g.blockOff(1):g.blockOff(2)])
			c.write(b)
		}, bad: []int{1}, good: []int{0, 2, 3, 4}},
		// The new final block was sealed as a middle block: the "last"
		// flag catches the truncation.
		{name: "truncate-at-block-boundary", size: size, tamper: func(c cipherFile) { c.truncate(g.blockOff(2)) },
			bad: []int{1}, good: []int{0}},
		{name: "truncate-inside-block", size: size, tamper: func(c cipherFile) { c.truncate(g.blockOff(2) + 100) },
			bad: []int{2}, good: []int{0, 1}},
		// 10 stored bytes cannot hold a block: the size is that of the
		// readable part, two blocks, whose final one is a middle block.
		{name: "truncate-inside-tag", size: size, tamper: func(c cipherFile) { c.truncate(g.blockOff(2) + 10) },
			bad: []int{1}, good: []int{0}},
		{name: "truncate-inside-header", size: size, tamper: func(c cipherFile) { c.truncate(H / 2) },
			openFails: true},
		{name: "append-garbage", size: size, tamper: func(c cipherFile) { c.appendBytes(patterned(77, 100)) },
			bad: []int{4}, good: []int{0, 1, 2, 3}},
		// The old final block now reads as a middle block sealed as final:
		// authentic (what a crash while extending leaves), so it reads.
		{name: "append-garbage-after-full-block", size: full4, tamper: func(c cipherFile) { c.appendBytes(patterned(78, 100)) },
			bad: []int{4}, good: []int{0, 1, 2, 3}},
		{name: "append-zero-block", size: full4, tamper: func(c cipherFile) { c.appendBytes(make([]byte, sb)) },
			bad: []int{4}, good: []int{0, 1, 2, 3}},
		{name: "zero-header", size: 2*bs + 10, tamper: func(c cipherFile) { replaceHeader(c, make([]byte, H)) },
			openFails: true},
		{name: "header-from-other-volume", size: 2*bs + 10, tamper: func(c cipherFile) { replaceHeader(c, otherHeader()) },
			openFails: true},
		// Even with this volume's ID written in, the wrapped key is bound
		// to the other volume's ID by its encryption context.
		{name: "header-from-other-volume-with-this-volume-id", size: 2*bs + 10, tamper: func(c cipherFile) {
			h := otherHeader()
			copy(h[16:32], c.read()[16:32])
			replaceHeader(c, h)
		}, openFails: true},
		{name: "header-version", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(7) }, openFails: true},
		{name: "header-volume-id", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(20) }, openFails: true},
		{name: "header-file-id", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(40) }, openFails: true},
		{name: "header-commitment", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(60) }, openFails: true},
		{name: "header-flags", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(81) }, openFails: true},
		{name: "header-key-id", size: 2*bs + 10, tamper: func(c cipherFile) {
			idOff, _, _, _, _ := headerEntry(t, c.read())
			c.flip(int64(idOff) + 3)
		}, openFails: true},
		{name: "header-blob", size: 2*bs + 10, tamper: func(c cipherFile) {
			_, _, blobOff, blobLen, _ := headerEntry(t, c.read())
			c.flip(int64(blobOff + blobLen/2))
		}, openFails: true},
		{name: "header-padding", size: 2*bs + 10, tamper: func(c cipherFile) {
			_, _, _, _, used := headerEntry(t, c.read())
			c.flip(int64(used) + 5)
		}, openFails: true},
		{name: "header-mac", size: 2*bs + 10, tamper: func(c cipherFile) { c.flip(H - 1) }, openFails: true},
	}
	// Two files with each other's (valid) header: the open succeeds with
	// the other file's key and ID, under which no block authenticates.
	for _, n := range []string{"header-swap-a", "header-swap-b"} {
		cases = append(cases, tamperCase{name: n, size: 3 * bs, bad: []int{0, 2}})
	}

	// Write everything through a mount, then unmount.
	orig := map[string][]byte{}
	m := mountVolume(t, vol)
	for i, tc := range cases {
		orig[tc.name] = patterned(100+i, tc.size)
		writeFile(t, m.path(tc.name), orig[tc.name])
	}
	orig["donor"], orig["bystander"] = patterned(1, size), patterned(2, size)
	writeFile(t, m.path("donor"), orig["donor"])
	writeFile(t, m.path("bystander"), orig["bystander"])
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	om := mountVolume(t, other)
	writeFile(t, om.path("other"), patterned(3, 2*bs+10))
	if err := om.unmount(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range cases {
		if tc.tamper != nil {
			tc.tamper(cipher(tc.name))
		}
	}
	a, b := cipher("header-swap-a"), cipher("header-swap-b")
	ha, hb := a.read()[:H], b.read()[:H]
	replaceHeader(a, hb)
	replaceHeader(b, ha)

	return vol, g, cases, orig
}

// checkTampered reads a damaged file through m: the header cases fail
// their open with EIO and one warning; the block cases fail exactly their
// bad blocks, each with EIO and one warning naming the block, and read
// every good block back. Then a plain read(2) of the whole file fails with
// EIO having returned only original bytes.
func checkTampered(t *testing.T, m *mount, g volumeGeometry, tc tamperCase, orig []byte, c cipherFile) {
	st, err := os.Stat(m.path(tc.name))
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	cst, err := os.Stat(c.path)
	if err != nil {
		t.Fatal(err)
	}
	if want := g.plainSize(cst.Size()); st.Size() != want {
		t.Errorf("stat: size %d, want %d (docs/FORMAT.md, from the stored size %d)", st.Size(), want, cst.Size())
	}
	plainSize := int(st.Size())

	var d *directReader
	_, err = runBounded(t, "open", func() error {
		var err error
		d, err = openDirect(m.path(tc.name), g.BlockSize)
		return err
	})
	switch {
	case tc.openFails && errnoFrom(err) != syscall.EIO:
		t.Errorf("open: %v, want EIO", err)
	case !tc.openFails && err != nil:
		t.Fatalf("open: %v", err)
	}
	if d != nil {
		for _, i := range tc.good {
			var got []byte
			_, err := runBounded(t, "read", func() error { var err error; got, err = d.block(i); return err })
			want := orig[min(i*g.BlockSize, plainSize):min((i+1)*g.BlockSize, plainSize)]
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("block %d: %d bytes, %v; want its %d original bytes", i, len(got), err, len(want))
			}
		}
		for _, i := range tc.bad {
			var got []byte
			_, err := runBounded(t, "read", func() error { var err error; got, err = d.block(i); return err })
			if errnoFrom(err) != syscall.EIO {
				t.Errorf("block %d: %d bytes, %v; want EIO", i, len(got), err)
			}
		}
		d.close()
	}

	// The warnings: one per failure, naming the file and the block.
	flushMountLog(t, m)
	w := warnLinesFor(m, tc.name)
	switch {
	case tc.openFails:
		if len(w) != 1 || !strings.Contains(w[0], "op=open") {
			t.Errorf("%d WARN lines name %s, want 1 for the open:\n%s", len(w), tc.name, strings.Join(w, "\n"))
		}
	default:
		if len(w) != len(tc.bad) {
			t.Errorf("%d WARN lines name %s, want %d (one per bad block read):\n%s", len(w), tc.name, len(tc.bad), strings.Join(w, "\n"))
		}
		for _, i := range tc.bad {
			re := regexp.MustCompile(`op=read .*block=` + fmt.Sprint(i) + `( |$)`)
			n := 0
			for _, l := range w {
				if re.MatchString(l) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d WARN lines name block %d of %s, want 1:\n%s", n, i, tc.name, strings.Join(w, "\n"))
			}
		}
	}
	if t.Failed() {
		t.Logf("warnings for %s:\n%s", tc.name, strings.Join(w, "\n"))
		if tc.gap != "" {
			t.Logf("known product gap: %s", tc.gap)
		}
	}

	// The whole file through the page cache: EIO, and whatever came
	// before it is original bytes.
	var got []byte
	_, err = runBounded(t, "read of the whole file", func() error { var err error; got, err = os.ReadFile(m.path(tc.name)); return err })
	if errnoFrom(err) != syscall.EIO {
		t.Errorf("reading the whole file: %d bytes, %v; want EIO", len(got), err)
	}
	if !bytes.HasPrefix(orig, got) {
		t.Errorf("reading the whole file returned %d bytes that are not a prefix of the original", len(got))
	}
}

// TestTamperKMSHeaders damages headers of an aws-kms volume: KMS itself
// refuses a wrapped key moved to another file or volume, and a header
// naming a key the volume does not use is refused without asking KMS.
func TestTamperKMSHeaders(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	otherEnv := &kmsEnv{srv: env.srv, proxy: env.proxy,
		vol: newVolume(t, env.srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", env.proxy.Endpoint())}
	g := geometryOf(t, env.vol)
	H := g.HeaderSize
	cipher := func(v *volume, name string) cipherFile { return cipherFile{t: t, path: filepath.Join(v.Dir, name)} }

	type kmsCase struct {
		name     string
		tamper   func(c cipherFile)
		decrypts int    // KMS Decrypt requests the open makes
		reason   string // in the WARN line; "a|b": either
	}
	cases := []kmsCase{
		{"header-from-other-volume-with-this-volume-id", func(c cipherFile) {
			h := cipher(otherEnv.vol, "other").read()[:H]
			b := c.read()
			copy(h[16:32], b[16:32])
			copy(b, h)
			c.write(b)
		}, 1, keyring.ErrInvalidCiphertext.Error()},
		{"header-file-id", func(c cipherFile) { c.flip(40) }, 1, keyring.ErrInvalidCiphertext.Error()},
		{"header-blob-end", func(c cipherFile) {
			_, _, blobOff, blobLen, _ := headerEntry(t, c.read())
			c.flip(int64(blobOff + blobLen - 1))
		}, 1, keyring.ErrInvalidCiphertext.Error()},
		// local-kms does not authenticate every byte of its blobs (the
		// middle one names its key, which the request's KeyId overrides):
		// it may unwrap the right key, and then the header MAC, which
		// covers the blob, refuses the header.
		{"header-blob-middle", func(c cipherFile) {
			_, _, blobOff, blobLen, _ := headerEntry(t, c.read())
			c.flip(int64(blobOff + blobLen/2))
		}, 1, keyring.ErrInvalidCiphertext.Error() + "|header authentication failed"},
		// The same blob, but the entry names key B: never sent to KMS.
		{"header-names-another-key", func(c cipherFile) {
			b := c.read()
			idOff, idLen, _, _, _ := headerEntry(t, b)
			if string(b[idOff:idOff+idLen]) != kmstest.KeyAARN || len(kmstest.KeyBARN) != idLen {
				t.Fatalf("header names %q, want %s", b[idOff:idOff+idLen], kmstest.KeyAARN)
			}
			copy(b[idOff:], kmstest.KeyBARN)
			c.write(b)
		}, 0, keyring.ErrNoUsableKey.Error()},
	}

	k := env.mount(t, "--key-pool", "0")
	data := patterned(9, 2*g.BlockSize+10)
	for _, tc := range cases {
		writeFile(t, k.path(tc.name), data)
	}
	writeFile(t, k.path("swap-a"), data)
	writeFile(t, k.path("swap-b"), patterned(10, 2*g.BlockSize+10))
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	ok := otherEnv.mount(t, "--key-pool", "0")
	writeFile(t, ok.path("other"), data)
	if err := ok.unmount(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		tc.tamper(cipher(env.vol, tc.name))
	}
	a, b := cipher(env.vol, "swap-a"), cipher(env.vol, "swap-b")
	ab, bb := a.read(), b.read()
	ha := bytes.Clone(ab[:H])
	copy(ab, bb[:H])
	copy(bb, ha)
	a.write(ab)
	b.write(bb)

	k = env.mount(t, "--key-pool", "0")
	k.AllowWarnings = true
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k.idle(t)
			k.reset(t)
			var err error
			_, err = runBounded(t, "open", func() error { _, err := os.ReadFile(k.path(tc.name)); return err })
			if errnoFrom(err) != syscall.EIO {
				t.Errorf("open: %v, want EIO", err)
			}
			if n := env.proxy.Count("Decrypt"); n != tc.decrypts {
				t.Errorf("%d Decrypt requests, want %d", n, tc.decrypts)
			}
			flushMountLog(t, k.mount)
			w := warnLinesFor(k.mount, tc.name)
			said := false
			for _, r := range strings.Split(tc.reason, "|") {
				said = said || len(w) == 1 && strings.Contains(w[0], r)
			}
			if len(w) != 1 || !strings.Contains(w[0], "op=open") || !said {
				t.Errorf("want one WARN line for the open saying %q, got:\n%s", tc.reason, strings.Join(w, "\n"))
			}
		})
	}
	t.Run("header-swap", func(t *testing.T) {
		k.idle(t)
		k.reset(t)
		d, err := openDirect(k.path("swap-a"), g.BlockSize)
		if err != nil {
			t.Fatalf("open of a file with another file's valid header: %v", err)
		}
		defer d.close()
		if got, err := d.block(1); errnoFrom(err) != syscall.EIO {
			t.Errorf("block 1 under the other file's key: %d bytes, %v; want EIO", len(got), err)
		}
		if n := env.proxy.Count("Decrypt"); n != 1 {
			t.Errorf("%d Decrypt requests, want 1", n)
		}
		flushMountLog(t, k.mount)
		if w := warnLinesFor(k.mount, "swap-a"); len(w) != 1 || !strings.Contains(w[0], "block=1") {
			t.Errorf("want one WARN line naming block 1, got:\n%s", strings.Join(w, "\n"))
		}
	})
}

// TestTamperTruncateToEmpty pins a documented limit (docs/THREAT_MODEL.md):
// a cipher file cut to its header alone reads as an empty file, because
// that is also what kmsfs's own truncate to 0 leaves, and a header records
// nothing about the blocks that followed it. Every cut that leaves at
// least one block is detected (TestTamper).
func TestTamperTruncateToEmpty(t *testing.T) {
	t.Parallel()
	vol := newVolume(t, nil)
	g := geometryOf(t, vol)
	m := mountVolume(t, vol)
	writeFile(t, m.path("f"), patterned(5, 3*g.BlockSize+17))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(vol.Dir, "f"), int64(g.HeaderSize)); err != nil {
		t.Fatal(err)
	}
	m2 := mountVolume(t, vol)
	got, err := os.ReadFile(m2.path("f"))
	if err != nil || len(got) != 0 {
		t.Fatalf("a header-only cipher file reads as %d bytes, %v; the documented behaviour is an empty file", len(got), err)
	}
}
