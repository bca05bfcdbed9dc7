package blockfile

import (
	"fmt"
	"testing"
)

func BenchmarkFileWrite(b *testing.B) {
	for _, n := range []int{4 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("append/%dKiB", n>>10), func(b *testing.B) {
			f, m := newTestFile(b, 4096)
			p := randBytes(n)
			var size int64
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if size > 64<<20 {
					m.Truncate(512)
					size = 0
				}
				var err error
				if size, err = f.WriteAt(p, size, size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
