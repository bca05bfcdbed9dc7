package blockfile

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// Journal vectors: cipher files whose journal holds a record, genuine or
// not, and whose block 1 is torn in place, with what a reader gets before
// and after Settle. Each file in testdata/journal is a text header, a
// blank line, then the bytes of the cipher file:
//
//	before settle: ok | auth failure      (a read of the whole file)
//	after settle: ok | auth failure
//	data key: <hex>
//	plaintext sha256: <hex>               (of the file when it reads ok)
//	comment: <free text>
//
// They are frozen with the format: testdata/journal holds files of
// header version 1 and is never regenerated; testdata/journal-v2 holds
// version 2 files. Regenerate those only with a format change:
// go test ./blockfile -run TestJournalVectors -update-journal-vectors
var updateJournalVectors = flag.Bool("update-journal-vectors", false, "rewrite blockfile/testdata/journal-v2")

// journalVectorDirs are the vector directories by header version.
var journalVectorDirs = map[uint16]string{blockcipher.Version1: "testdata/journal", blockcipher.Version2: "testdata/journal-v2"}

func TestJournalVectors(t *testing.T) {
	if *updateJournalVectors {
		writeJournalVectors(t, blockcipher.Version2)
	}
	for _, v := range []uint16{blockcipher.Version1, blockcipher.Version2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { testJournalVectors(t, journalVectorDirs[v]) })
	}
}

func testJournalVectors(t *testing.T, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) < 6 {
		t.Fatalf("found %d journal vectors, want at least 6", len(files))
	}
	for _, name := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			hdr, file := splitVector(t, b)
			h, err := blockcipher.ParseHeader(file[:512])
			if err != nil {
				t.Fatal(err)
			}
			key, _ := hex.DecodeString(hdr["data key"])
			c, err := h.Open(key)
			if err != nil {
				t.Fatal(err)
			}
			for _, settle := range []bool{false, true} {
				m := NewMemStore(file)
				f := File{C: c, S: m}
				want := hdr["before settle"]
				if settle {
					want = hdr["after settle"]
					if _, err := f.Settle(m.Size()); err != nil {
						t.Fatalf("Settle: %v", err)
					}
				}
				size, _ := c.Layout().PlainSize(m.Size())
				got := make([]byte, size)
				_, err := f.ReadAt(got, 0, size)
				outcome := "ok"
				if err != nil {
					outcome = "auth failure"
				}
				if outcome != want {
					t.Fatalf("settled %v: %s (%v), want %s", settle, outcome, err, want)
				}
				if sum := sha256.Sum256(got); outcome == "ok" && hex.EncodeToString(sum[:]) != hdr["plaintext sha256"] {
					t.Fatalf("settled %v: plaintext differs", settle)
				}
			}
		})
	}
}

func splitVector(t testing.TB, b []byte) (map[string]string, []byte) {
	t.Helper()
	hdr := map[string]string{}
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
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("bad vector header line %q", line)
		}
		hdr[k] = v
	}
	file, _ := io.ReadAll(r)
	return hdr, file
}

// writeJournalVectors makes each case from a file of three blocks whose
// block 1 is rewritten through the journal and torn in place.
func writeJournalVectors(t *testing.T, version uint16) {
	journalVectorDir := journalVectorDirs[version]
	os.RemoveAll(journalVectorDir)
	if err := os.MkdirAll(journalVectorDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const bs = 4096
	key := bytes.Repeat([]byte{0x6a}, blockcipher.DataKeySize)
	text := bytes.Repeat([]byte("kmsfs journal vector. "), 3*bs/22+1)[:3*bs]
	newer := bytes.Repeat([]byte{'N'}, 100)
	// file returns a fresh file holding text, the record of a rewrite of
	// block 1 (100 new bytes at its offset 50) in slot 0, and block 1
	// torn in place: what a crash during that rewrite leaves.
	file := func(fileID byte) ([]byte, []byte, *blockcipher.Cipher) {
		h := testHeaderV(t, version, 512, bs)
		h.FileID = [blockcipher.IDSize]byte{fileID}
		h.VolumeID = [blockcipher.IDSize]byte{0x76}
		slot, c, err := h.Seal(key)
		if err != nil {
			t.Fatal(err)
		}
		m := NewMemStore(slot)
		f := File{C: c, S: m}
		if _, err := f.WriteAt(text, 0, 0); err != nil {
			t.Fatal(err)
		}
		after := bytes.Clone(text)
		copy(after[bs+50:], newer)
		plain := after[bs : 2*bs]
		stored := c.SealBlock(nil, plain, 1, false)
		if err := f.writeJournal([]journalRec{{idx: 1, stored: stored}}); err != nil {
			t.Fatal(err)
		}
		b := m.Bytes()
		at := c.Layout().BlockToCipherOff(1)
		copy(b[at:at+2000], stored[:2000]) // torn after 2000 bytes
		return b, after, c
	}
	l, _ := blockcipher.NewLayout(512, bs, version)
	rec := l.HeaderSize // slot 0
	genuine, after, _ := file(1)
	other, _, _ := file(2)
	cleared := bytes.Clone(genuine)
	clear(cleared[rec : rec+recHeaderSize]) // erased header, block left: what a forger would find
	rearmed := bytes.Clone(cleared)
	copy(rearmed[rec:rec+recMACOff], genuine[rec:rec+recMACOff])
	movedIdx := bytes.Clone(genuine)
	binary.BigEndian.PutUint64(movedIdx[rec:], 3) // claims block 2
	padChanged := bytes.Clone(genuine)
	binary.BigEndian.PutUint32(padChanged[rec+12:], uint32(l.StoredBlockSize()))
	fromOther := bytes.Clone(genuine)
	copy(fromOther[rec:rec+l.JournalSlotSize()], other[rec:rec+l.JournalSlotSize()])
	v1 := bytes.Clone(genuine)
	clear(v1[rec+16 : rec+recHeaderSize])
	v1[rec+16] = 0
	copy(v1[rec+24:], genuine[rec+recHeaderSize:rec+recHeaderSize+l.StoredBlockSize()])
	for _, c := range []struct {
		name, before, after, comment string
		file                         []byte
	}{
		{"ok-torn-block-repaired", "ok", "ok", "a genuine record repairs the torn block 1", genuine},
		{"cleared-record-ignored", "auth failure", "auth failure", "the record's header was erased; its block alone is not used", cleared},
		{"rearmed-record-refused", "auth failure", "auth failure", "an erased header written back without its MAC", rearmed},
		{"record-index-changed", "auth failure", "auth failure", "the record's block index changed: its MAC fails", movedIdx},
		{"record-padding-changed", "auth failure", "auth failure", "the record's pad length changed: its MAC fails", padChanged},
		{"record-of-another-file", "auth failure", "auth failure", "the slot of another file's genuine record", fromOther},
		{"record-without-mac", "auth failure", "auth failure", "the genuine record in the format of kmsfs before record version 2", v1},
	} {
		sum := sha256.Sum256(after)
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "before settle: %s\nafter settle: %s\ndata key: %x\nplaintext sha256: %x\ncomment: %s\n\n", c.before, c.after, key, sum, c.comment)
		buf.Write(c.file)
		if err := os.WriteFile(filepath.Join(journalVectorDir, c.name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
