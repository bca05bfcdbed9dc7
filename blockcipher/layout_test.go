package blockcipher

import (
	"errors"
	"testing"
)

func TestLayoutSizesRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		bs int
		v  uint16
	}{{512, Version1}, {4096, Version1}, {1 << 20, Version1}, {512, Version2}, {4096, Version2}, {1 << 20, Version2}} {
		bs := tc.bs
		l, err := NewLayout(1024, bs, tc.v)
		if err != nil {
			t.Fatal(err)
		}
		b := int64(bs)
		sizes := []int64{0, 1, 2, b - 1, b, b + 1, 2*b - 1, 2 * b, 2*b + 1, 100*b + 17, MaxPlainSize - 1}
		prev := int64(-1)
		for _, p := range sizes {
			c := l.CipherSize(p)
			if c <= prev {
				t.Errorf("bs %d: CipherSize(%d) = %d not above the previous %d", bs, p, c, prev)
			}
			prev = c
			got, err := l.PlainSize(c)
			if err != nil || got != p {
				t.Errorf("bs %d: PlainSize(CipherSize(%d)=%d) = %d, %v", bs, p, c, got, err)
			}
		}
	}
}

func TestLayoutPlainSizeMonotonic(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		l, _ := NewLayout(512, 512, v)
		prev := int64(0)
		for c := int64(0); c < l.DataOff()+5*(512+l.Overhead()); c++ {
			p, _ := l.PlainSize(c)
			if p < prev {
				t.Fatalf("PlainSize(%d) = %d < PlainSize(%d) = %d", c, p, c-1, prev)
			}
			prev = p
		}
	})
}

func TestLayoutImpossibleSizes(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		l, _ := NewLayout(512, 4096, v)
		d := l.DataOff()
		ov := l.Overhead()
		for _, c := range []int64{1, 100, 511, d + 1, d + ov, d + 4096 + ov + ov} {
			if _, err := l.PlainSize(c); !errors.Is(err, ErrTruncated) {
				t.Errorf("PlainSize(%d) error = %v, want ErrTruncated", c, err)
			}
		}
		// The header with (part of) the journal and no block: empty.
		for _, c := range []int64{512, 513, d - 1, d} {
			if p, err := l.PlainSize(c); p != 0 || err != nil {
				t.Errorf("PlainSize(%d) = %d, %v; want 0", c, p, err)
			}
		}
	})
}

func TestNewLayoutRejects(t *testing.T) {
	for _, tc := range []struct{ hs, bs int }{
		{512, 0}, {512, 256}, {512, 4097}, {512, 3 << 10}, {512, 2 << 20}, {100, 4096}, {MaxHeaderSize + 1, 4096},
	} {
		if _, err := NewLayout(tc.hs, tc.bs, Version2); !errors.Is(err, ErrMalformed) {
			t.Errorf("NewLayout(%d, %d) error = %v, want ErrMalformed", tc.hs, tc.bs, err)
		}
	}
	for _, v := range []uint16{0, 3, 0xffff} {
		if _, err := NewLayout(512, 4096, v); !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("NewLayout version %d: error = %v, want ErrUnsupportedVersion", v, err)
		}
	}
}

func TestLayoutSpan(t *testing.T) {
	l, _ := NewLayout(512, 4096, Version2)
	for _, tc := range []struct {
		off, n       int64
		first, count uint64
	}{
		{0, 0, 0, 0}, {0, 1, 0, 1}, {4095, 1, 0, 1}, {4095, 2, 0, 2}, {4096, 4096, 1, 1},
		{4096, 4097, 1, 2}, {1, 3 * 4096, 0, 4}, {10 * 4096, 1, 10, 1},
	} {
		first, count := l.Span(tc.off, tc.n)
		if first != tc.first || count != tc.count {
			t.Errorf("Span(%d, %d) = %d, %d; want %d, %d", tc.off, tc.n, first, count, tc.first, tc.count)
		}
	}
	if got := l.BlockToCipherOff(3); got != 512+l.JournalSize()+3*(4096+Overhead2) {
		t.Errorf("BlockToCipherOff(3) = %d", got)
	}
	if got := l.CipherOffToBlock(l.BlockToCipherOff(7) + 100); got != 7 {
		t.Errorf("CipherOffToBlock = %d, want 7", got)
	}
}

// TestJournalSlotsHoldRecords: a slot holds the record header and a full
// stored block, for every block size and version; Version1 slots keep the
// size they always had (B+64).
func TestJournalSlotsHoldRecords(t *testing.T) {
	versions(t, func(t *testing.T, v uint16) {
		for bs := MinBlockSize; bs <= MaxBlockSize; bs *= 2 {
			l, err := NewLayout(512, bs, v)
			if err != nil {
				t.Fatal(err)
			}
			if spare := l.JournalSlotSize() - l.StoredBlockSize(); spare < JournalRecordHeader {
				t.Errorf("block size %d: a slot leaves %d bytes before its block, want %d", bs, spare, JournalRecordHeader)
			}
			if v == Version1 && l.JournalSlotSize() != int64(bs)+64 {
				t.Errorf("block size %d: a version 1 slot has %d bytes, want %d", bs, l.JournalSlotSize(), bs+64)
			}
		}
	})
}
