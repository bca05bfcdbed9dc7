package keyring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// failingKeyring fails every call with err.
type failingKeyring struct{ err error }

func (f failingKeyring) GenerateDataKey(context.Context, EncryptionContext) (*DataKey, []WrappedKey, error) {
	return nil, nil, f.err
}

func (f failingKeyring) Decrypt(context.Context, []WrappedKey, EncryptionContext) (*DataKey, error) {
	return nil, f.err
}

func TestMetricsCounts(t *testing.T) {
	t.Parallel()
	inner := newCounting(t)
	m := NewMetrics(inner)
	ctx := context.Background()

	var wrapped []WrappedKey
	for i := range 3 {
		dk, w, err := m.GenerateDataKey(ctx, testContext(i))
		if err != nil {
			t.Fatal(err)
		}
		dk.Wipe()
		wrapped = w
	}
	for range 4 {
		dk, err := m.Decrypt(ctx, wrapped, testContext(2))
		if err != nil {
			t.Fatal(err)
		}
		dk.Wipe()
	}
	if _, err := m.Decrypt(ctx, wrapped, testContext(7)); !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("wrong context through Metrics: %v", err)
	}
	if _, err := m.Decrypt(ctx, nil, testContext(2)); !errors.Is(err, ErrNoUsableKey) {
		t.Fatalf("no entries through Metrics: %v", err)
	}
	disabled := fmt.Errorf("kms Decrypt with key k: %w", ErrKeyDisabled)
	inner.failWith(disabled)
	for range 2 {
		if _, err := m.Decrypt(ctx, wrapped, testContext(2)); err != disabled {
			t.Fatalf("Metrics changed the inner error: %v", err)
		}
	}
	if _, _, err := m.GenerateDataKey(ctx, testContext(9)); err != disabled {
		t.Fatalf("Metrics changed the inner error: %v", err)
	}

	for _, c := range []struct {
		op            string
		calls, failed int64
	}{
		{"generate_data_key", 4, 1},
		{"decrypt", 8, 4},
		{"encrypt", 0, 0},
	} {
		calls, failed := m.Calls(c.op)
		if calls != c.calls || failed != c.failed {
			t.Errorf("Calls(%q) = %d, %d; want %d, %d", c.op, calls, failed, c.calls, c.failed)
		}
	}
	if g, d := inner.generates.Load(), inner.decrypts.Load(); g != 4 || d != 8 {
		t.Errorf("inner saw %d generates and %d decrypts, want 4 and 8", g, d)
	}

	byOp := snapshot(m)
	for _, c := range []struct {
		op, result string
		want       int64
	}{
		{"decrypt", "ok", 4},
		{"decrypt", "invalid_ciphertext", 1},
		{"decrypt", "no_usable_key", 1},
		{"decrypt", "key_disabled", 2},
		{"generate_data_key", "ok", 3},
		{"generate_data_key", "key_disabled", 1},
	} {
		if got := byOp[c.op].Results[c.result]; got != c.want {
			t.Errorf("%s %s: %d calls, want %d", c.op, c.result, got, c.want)
		}
	}
	if n := len(byOp["decrypt"].Results); n != 4 {
		t.Errorf("decrypt has %d results, want 4 (none for classes that did not occur): %v", n, byOp["decrypt"].Results)
	}
	if _, ok := byOp["wrap"]; ok || len(byOp) != 2 {
		t.Errorf("snapshot has operations %v, want generate_data_key and decrypt", byOp)
	}
}

// snapshot returns m's snapshot by operation.
func snapshot(m *Metrics) map[string]OpStats {
	out := map[string]OpStats{}
	for _, s := range m.Snapshot() {
		out[s.Op] = s
	}
	return out
}

func TestMetricsErrorClasses(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err   error
		class string
	}{
		{ErrAccessDenied, "access_denied"},
		{ErrKeyDisabled, "key_disabled"},
		{ErrKeyNotFound, "key_not_found"},
		{ErrInvalidCiphertext, "invalid_ciphertext"},
		{ErrUnreachable, "unreachable"},
		{ErrThrottled, "throttled"},
		{ErrNoUsableKey, "no_usable_key"},
		{context.Canceled, "canceled"},
		{fmt.Errorf("kms Decrypt with key k: %w (AccessDeniedException)", ErrAccessDenied), "access_denied"},
		{fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", ErrThrottled)), "throttled"},
		{fmt.Errorf("call: %w", context.Canceled), "canceled"},
		{errors.Join(errors.New("first"), fmt.Errorf("x: %w", ErrKeyNotFound)), "key_not_found"},
		{errors.New("something else"), "other"},
		{fmt.Errorf("detail only: %v", ErrKeyDisabled), "other"}, // %v: not the sentinel
	} {
		m := NewMetrics(failingKeyring{c.err})
		if _, err := m.Decrypt(context.Background(), nil, nil); err != c.err {
			t.Errorf("%v: Metrics returned %v", c.err, err)
		}
		if got := ErrorClass(c.err); got != c.class {
			t.Errorf("ErrorClass(%q) = %q, want %q", c.err, got, c.class)
		}
		if got := snapshot(m)["decrypt"].Results; got[c.class] != 1 || len(got) != 1 {
			t.Errorf("%v: results %v, want one %s", c.err, got, c.class)
		}
	}
}

func TestMetricsLatency(t *testing.T) {
	t.Parallel()
	inner := newCounting(t)
	m := NewMetrics(inner)
	if s := m.Snapshot(); len(s) != 0 {
		t.Errorf("empty Metrics has a snapshot: %v", s)
	}
	ctx := context.Background()
	for i := range 5 {
		dk, w, err := m.GenerateDataKey(ctx, testContext(i))
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Decrypt(ctx, w, testContext(i))
		if err != nil {
			t.Fatal(err)
		}
		got.Wipe()
		dk.Wipe()
	}
	// Slow calls with known latencies: one of about 3 s (bucket le=5) and
	// one of about 20 s (above the largest bucket: counted, in no bucket).
	m.observe("decrypt", time.Now().Add(-3*time.Second), nil)
	m.observe("decrypt", time.Now().Add(-20*time.Second), ErrUnreachable)

	for op, s := range snapshot(m) {
		calls, _ := m.Calls(op)
		if len(s.Buckets) != len(LatencyBuckets) || s.Count != calls {
			t.Fatalf("%s: %d buckets, count %d; want %d, %d", op, len(s.Buckets), s.Count, len(LatencyBuckets), calls)
		}
		for i := 1; i < len(s.Buckets); i++ {
			if s.Buckets[i] < s.Buckets[i-1] {
				t.Errorf("%s: bucket le=%v has %d, less than the previous %d: not cumulative", op, LatencyBuckets[i], s.Buckets[i], s.Buckets[i-1])
			}
		}
		if s.Buckets[len(s.Buckets)-1] > s.Count {
			t.Errorf("%s: last bucket %d above the count %d", op, s.Buckets[len(s.Buckets)-1], s.Count)
		}
		if op == "decrypt" {
			at := func(le float64) int64 { return s.Buckets[slices.Index(LatencyBuckets, le)] }
			if at(2.5) != s.Count-2 || at(5) != s.Count-1 || at(10) != s.Count-1 || s.Sum < 23*time.Second {
				t.Errorf("decrypt buckets le=2.5: %d, le=5: %d, le=10: %d, sum %v; want %d, %d, %d, at least 23s",
					at(2.5), at(5), at(10), s.Sum, s.Count-2, s.Count-1, s.Count-1)
			}
		}
	}
}

// A Metrics stands for a member of a Multi: its Wrap calls are counted.
func TestMetricsWrap(t *testing.T) {
	t.Parallel()
	l, err := newLocalFromBytes(bytes.Repeat([]byte{2}, LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	a, b := newCounting(t), NewMetrics(l)
	multi, err := NewMulti(NewMetrics(a), b)
	if err != nil {
		t.Fatal(err)
	}
	dk, w, err := multi.GenerateDataKey(context.Background(), testContext(1))
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if len(w) != 2 {
		t.Fatalf("%d wrapped entries, want 2", len(w))
	}
	if got := snapshot(b)["wrap"].Results["ok"]; got != 1 {
		t.Errorf("the second member counted %d wraps, want 1", got)
	}
	if _, err := NewMetrics(failingKeyring{}).Wrap(context.Background(), nil, nil); err == nil {
		t.Error("Wrap through a keyring that cannot wrap succeeded")
	}
}

func TestMetricsConcurrent(t *testing.T) {
	t.Parallel()
	inner := newCounting(t)
	m := NewMetrics(inner)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for j := range 50 {
				dk, w, err := m.GenerateDataKey(context.Background(), testContext(g*100+j))
				if err != nil {
					t.Error(err)
					return
				}
				dk.Wipe()
				if _, err := m.Decrypt(context.Background(), w, testContext(-1)); err == nil {
					t.Error("wrong context opened")
				}
				if j%10 == 0 {
					m.Snapshot()
					m.Calls("decrypt")
				}
			}
		})
	}
	wg.Wait()
	if calls, failed := m.Calls("decrypt"); calls != 400 || failed != 400 {
		t.Errorf("decrypt: %d calls, %d failed; want 400, 400", calls, failed)
	}
	if calls, failed := m.Calls("generate_data_key"); calls != 400 || failed != 0 {
		t.Errorf("generate_data_key: %d calls, %d failed; want 400, 0", calls, failed)
	}
	if got, want := m.Describe(), fmt.Sprintf("%T", inner); got != want {
		t.Errorf("Describe() of a keyring without Describe = %q, want %q", got, want)
	}
	l, err := newLocalFromBytes(bytes.Repeat([]byte{1}, LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := NewMetrics(l).Describe(), l.Describe(); got != want {
		t.Errorf("Describe() = %q, want the inner keyring's %q", got, want)
	}
}
