package blockcipher

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Known-answer vectors. Each file in testdata/vectors is a small text
// header, a blank line, then the bytes of a cipher file:
//
//	expect: ok | auth failure | header failure | format error | truncated
//	data key: <hex>
//	plaintext sha256: <hex>          (for ok)
//	comment: <free text>
//
// They are frozen: a change to the format makes them fail, which is the
// point. testdata/vectors holds version 1 files, as kmsfs wrote them
// before version 2, and is never regenerated; testdata/vectors-v2 holds
// version 2 files. Regenerate those only together with a version bump:
// go test ./blockcipher -run TestVectors -update-vectors
var updateVectors = flag.Bool("update-vectors", false, "rewrite blockcipher/testdata/vectors-v2")

// vectorDirs are the vector directories, by the version their files have.
var vectorDirs = map[uint16]string{Version1: "testdata/vectors", Version2: "testdata/vectors-v2"}

type vector struct {
	expect, comment string
	key             []byte
	plainSum        string
	file            []byte
}

func parseVector(t *testing.T, b []byte) vector {
	t.Helper()
	var v vector
	r := bufio.NewReader(bytes.NewReader(b))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal("vector header not terminated by a blank line")
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			break
		}
		k, val, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("bad vector header line %q", line)
		}
		switch k {
		case "expect":
			v.expect = val
		case "data key":
			v.key, _ = hex.DecodeString(val)
		case "plaintext sha256":
			v.plainSum = val
		case "comment":
			v.comment = val
		default:
			t.Fatalf("unknown vector header %q", k)
		}
	}
	v.file, _ = io.ReadAll(r)
	return v
}

// decryptVector runs a cipher file through the reader path: prefix, header,
// commitment and MAC, then every block.
func decryptVector(file, key []byte) ([]byte, error) {
	if len(file) == 0 {
		return nil, nil
	}
	pl, err := ParsePrefix(file)
	if err != nil {
		return nil, err
	}
	hs := int(pl.HeaderSize)
	if len(file) < hs {
		return nil, formatErr("slot", ErrTruncated, "")
	}
	h, err := ParseHeader(file[:hs])
	if err != nil {
		return nil, err
	}
	c, err := h.Open(key)
	if err != nil {
		return nil, err
	}
	size, err := c.Layout().PlainSize(int64(len(file)))
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	if size == 0 {
		return out, nil
	}
	l := c.Layout()
	if int64(len(file)) <= l.DataOff() {
		return out, nil
	}
	// Vectors are files at rest: no journal record, so the blocks alone
	// say what a reader gets (blockfile reads the same way).
	out, err = c.OpenRun(out[:0], file[l.DataOff():], 0, true)
	return out, err
}

func outcome(err error) string {
	var fe *FormatError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTruncated):
		return "truncated"
	case errors.Is(err, ErrAuth):
		return "auth failure"
	case errors.Is(err, ErrHeaderAuth):
		return "header failure"
	case errors.As(err, &fe):
		return "format error"
	}
	return "unexpected error: " + err.Error()
}

func TestVectors(t *testing.T) {
	if *updateVectors {
		writeVectors(t, Version2)
	}
	versions(t, func(t *testing.T, version uint16) {
		testVectors(t, vectorDirs[version])
	})
}

func testVectors(t *testing.T, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) < 15 {
		t.Fatalf("found %d vectors in %s, want at least 15", len(files), dir)
	}
	for _, name := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			v := parseVector(t, b)
			plain, err := decryptVector(v.file, v.key)
			if got := outcome(err); got != v.expect {
				t.Fatalf("outcome %q (%v), want %q", got, err, v.expect)
			}
			if v.expect == "ok" {
				sum := sha256.Sum256(plain)
				if hex.EncodeToString(sum[:]) != v.plainSum {
					t.Fatal("plaintext hash differs")
				}
			}
		})
	}
}

func writeVectors(t *testing.T, version uint16) {
	vectorDir := vectorDirs[version]
	os.RemoveAll(vectorDir)
	if err := os.MkdirAll(vectorDir, 0o755); err != nil {
		t.Fatal(err)
	}
	type gen struct {
		name, comment string
		bs            int
		plain         []byte
		holeAt        int64
		mutate        func(file []byte, l Layout) []byte
		keyFor        func(key []byte) []byte
	}
	text := func(n int) []byte {
		return bytes.Repeat([]byte("kmsfs known-answer vector. "), n/27+1)[:n]
	}
	flip := func(off func(l Layout) int64) func([]byte, Layout) []byte {
		return func(f []byte, l Layout) []byte { f[off(l)] ^= 0x01; return f }
	}
	gens := []gen{
		{name: "ok-header-only", comment: "created, never written: header, no blocks", plain: nil},
		{name: "ok-1-byte", plain: []byte("x")},
		{name: "ok-one-block", plain: text(4096)},
		{name: "ok-block-plus-1", plain: text(4097)},
		{name: "ok-three-blocks-partial", plain: text(3*4096 + 1000)},
		{name: "ok-hole", comment: "one byte written at 3*4096: blocks 0-2 are holes", plain: []byte("!"), holeAt: 3 * 4096},
		{name: "ok-block-size-512", bs: 512, plain: text(3000)},
		{name: "ok-block-size-64k", bs: 64 << 10, plain: text(100000)},
		{name: "auth-nonce-bit", plain: text(5000), mutate: flip(func(l Layout) int64 { return l.DataOff() + 5 })},
		{name: "auth-ciphertext-bit", plain: text(5000), mutate: flip(func(l Layout) int64 { return l.DataOff() + 100 })},
		{name: "auth-tag-bit", plain: text(5000), mutate: flip(func(l Layout) int64 { return l.DataOff() + l.StoredBlockSize() - 1 })},
		{name: "auth-blocks-swapped", plain: text(3 * 4096), mutate: func(f []byte, l Layout) []byte {
			a, b := f[l.BlockToCipherOff(0):l.BlockToCipherOff(1)], f[l.BlockToCipherOff(1):l.BlockToCipherOff(2)]
			tmp := bytes.Clone(a)
			copy(a, b)
			copy(b, tmp)
			return f
		}},
		{name: "auth-cut-at-block-boundary", comment: "final block removed: the new final block was sealed as a middle block", plain: text(3 * 4096), mutate: func(f []byte, l Layout) []byte {
			return f[:l.BlockToCipherOff(2)]
		}},
		{name: "auth-zero-block-appended", plain: text(2 * 4096), mutate: func(f []byte, l Layout) []byte {
			return append(f, make([]byte, l.StoredBlockSize())...)
		}},
		{name: "truncated-inside-block", plain: text(5000), mutate: func(f []byte, l Layout) []byte {
			return f[:l.BlockToCipherOff(1)+10]
		}},
		{name: "header-key-id-bit", comment: "header MAC fails", plain: text(100), mutate: flip(func(l Layout) int64 { return fixedSize + 5 })},
		{name: "header-commitment-bit", plain: text(100), mutate: flip(func(l Layout) int64 { return 50 })},
		{name: "header-wrong-key", comment: "the data key given does not match the commitment", plain: text(100), keyFor: func(k []byte) []byte {
			k = bytes.Clone(k)
			k[0] ^= 1
			return k
		}},
		{name: "format-bad-magic", plain: text(100), mutate: flip(func(l Layout) int64 { return 0 })},
		{name: "format-version-257", comment: "version 0x0101", plain: text(100), mutate: flip(func(l Layout) int64 { return 6 })},
		{name: "header-version-changed", comment: "version 2 to 3 would be a format error; 2 to 1 reads the blocks the other way: the header MAC fails first", plain: text(100), mutate: func(f []byte, l Layout) []byte {
			f[7] ^= 3
			return f
		}},
		{name: "auth-key-nonce-bit", comment: "a bit of the first nonce, which names the derived key", plain: text(5000), mutate: flip(func(l Layout) int64 { return l.DataOff() + 3 })},
		{name: "auth-second-nonce-bit", plain: text(5000), mutate: flip(func(l Layout) int64 { return l.DataOff() + 15 })},
		{name: "truncated-header", plain: text(100), mutate: func(f []byte, l Layout) []byte { return f[:200] }},
		{name: "format-padding-not-zero", plain: text(100), mutate: flip(func(l Layout) int64 { return 400 })},
	}
	for _, g := range gens {
		bs := g.bs
		if bs == 0 {
			bs = 4096
		}
		h := testHeaderV(t, version, 512, bs)
		key := randomKey()
		slot, c, err := h.Seal(key)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, g.holeAt)
		want = append(want, g.plain...)
		file := slot
		if len(g.plain) > 0 {
			// What a writer leaves: the journal area and the holes
			// before holeAt (block-aligned) as zeros, then the blocks.
			l := c.Layout()
			first := l.PlainOffToBlock(g.holeAt)
			file = append(file, make([]byte, l.JournalSize()+int64(first)*l.StoredBlockSize())...)
			file = c.SealRun(file, g.plain, first, true)
		}
		if g.mutate != nil {
			file = g.mutate(file, c.Layout())
		}
		if g.keyFor != nil {
			key = g.keyFor(key)
		}
		expect := strings.SplitN(g.name, "-", 2)[0]
		expect = map[string]string{"ok": "ok", "auth": "auth failure", "header": "header failure", "format": "format error", "truncated": "truncated"}[expect]
		sum := sha256.Sum256(want)
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "expect: %s\ndata key: %x\n", expect, key)
		if expect == "ok" {
			fmt.Fprintf(&buf, "plaintext sha256: %x\n", sum)
		}
		if g.comment != "" {
			fmt.Fprintf(&buf, "comment: %s\n", g.comment)
		}
		buf.WriteString("\n")
		buf.Write(file)
		if err := os.WriteFile(filepath.Join(vectorDir, g.name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
