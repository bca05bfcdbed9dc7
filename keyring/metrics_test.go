package keyring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
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

	p := parseProm(t, m)
	for labels, want := range map[string]float64{
		`kmsfs_keyring_calls_total{op="decrypt"}`:                                 8,
		`kmsfs_keyring_calls_total{op="generate_data_key"}`:                       4,
		`kmsfs_keyring_errors_total{error="invalid_ciphertext",op="decrypt"}`:     1,
		`kmsfs_keyring_errors_total{error="no_usable_key",op="decrypt"}`:          1,
		`kmsfs_keyring_errors_total{error="key_disabled",op="decrypt"}`:           2,
		`kmsfs_keyring_errors_total{error="key_disabled",op="generate_data_key"}`: 1,
		`kmsfs_keyring_call_seconds_count{op="decrypt"}`:                          8,
		`kmsfs_keyring_call_seconds_bucket{le="+Inf",op="generate_data_key"}`:     4,
	} {
		if got, ok := p.samples[labels]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", labels, got, ok, want)
		}
	}
	if n := len(p.byName["kmsfs_keyring_errors_total"]); n != 4 {
		t.Errorf("%d error series, want 4 (no series for classes that did not occur)", n)
	}
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
		if got := errorClass(c.err); got != c.class {
			t.Errorf("errorClass(%q) = %q, want %q", c.err, got, c.class)
		}
		p := parseProm(t, m)
		key := fmt.Sprintf(`kmsfs_keyring_errors_total{error=%q,op="decrypt"}`, c.class)
		if p.samples[key] != 1 {
			t.Errorf("%v: no sample %s in\n%s", c.err, key, p.text)
		}
	}
}

func TestMetricsPrometheusFormat(t *testing.T) {
	t.Parallel()
	inner := newCounting(t)
	m := NewMetrics(inner)

	// An empty Metrics is valid text with no samples.
	if p := parseProm(t, m); len(p.samples) != 0 {
		t.Errorf("empty Metrics has samples:\n%s", p.text)
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
	// one of about 20 s (above the largest bucket: only +Inf).
	m.observe("decrypt", time.Now().Add(-3*time.Second), nil)
	m.observe("decrypt", time.Now().Add(-20*time.Second), ErrUnreachable)

	p := parseProm(t, m)
	for _, op := range []string{"decrypt", "generate_data_key"} {
		calls, _ := m.Calls(op)
		buckets := p.histogram(t, "kmsfs_keyring_call_seconds", op)
		if len(buckets) != len(latencyBuckets)+1 {
			t.Fatalf("%s: %d buckets, want %d", op, len(buckets), len(latencyBuckets)+1)
		}
		prevLe, prevCount := math.Inf(-1), -1.0
		for _, b := range buckets {
			if b.le <= prevLe {
				t.Errorf("%s: bucket le=%v after le=%v: not ascending", op, b.le, prevLe)
			}
			if b.count < prevCount {
				t.Errorf("%s: bucket le=%v has %v, less than the previous %v: not cumulative", op, b.le, b.count, prevCount)
			}
			prevLe, prevCount = b.le, b.count
		}
		last := buckets[len(buckets)-1]
		count := p.samples[fmt.Sprintf(`kmsfs_keyring_call_seconds_count{op=%q}`, op)]
		if !math.IsInf(last.le, 1) || last.count != count || count != float64(calls) {
			t.Errorf("%s: +Inf bucket %v (le %v), _count %v, calls %d: want all equal", op, last.count, last.le, count, calls)
		}
		sum := p.samples[fmt.Sprintf(`kmsfs_keyring_call_seconds_sum{op=%q}`, op)]
		if sum < 0 || (op == "decrypt" && sum < 23) {
			t.Errorf("%s: _sum %v", op, sum)
		}
		if op == "decrypt" {
			at := func(le float64) float64 {
				for _, b := range buckets {
					if b.le == le {
						return b.count
					}
				}
				t.Fatalf("no bucket le=%v", le)
				return 0
			}
			if at(2.5) != count-2 || at(5) != count-1 || at(10) != count-1 {
				t.Errorf("decrypt buckets le=2.5: %v, le=5: %v, le=10: %v; want %v, %v, %v",
					at(2.5), at(5), at(10), count-2, count-1, count-1)
			}
		}
	}
	if p.types["kmsfs_keyring_calls_total"] != "counter" || p.types["kmsfs_keyring_errors_total"] != "counter" ||
		p.types["kmsfs_keyring_call_seconds"] != "histogram" {
		t.Errorf("metric types %v", p.types)
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
					m.WritePrometheus(new(bytes.Buffer))
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

// prom is a parsed Prometheus text exposition.
type prom struct {
	text    string
	types   map[string]string              // metric family -> type
	samples map[string]float64             // name{sorted labels} -> value
	byName  map[string][]map[string]string // sample name -> label sets
}

var (
	promSample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	promLabel  = regexp.MustCompile(`^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$`)
	promHelp   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$`)
	promType   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
)

// parseProm renders m and parses it strictly: every line is a HELP, a TYPE
// or a sample of the family last declared, with a unique label set.
func parseProm(t *testing.T, m *Metrics) *prom {
	t.Helper()
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	p := &prom{text: buf.String(), types: map[string]string{}, samples: map[string]float64{}, byName: map[string][]map[string]string{}}
	if !strings.HasSuffix(p.text, "\n") {
		t.Fatalf("exposition does not end in a newline:\n%s", p.text)
	}
	family, helped := "", map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(p.text, "\n"), "\n") {
		if mm := promHelp.FindStringSubmatch(line); mm != nil {
			helped[mm[1]] = true
			continue
		}
		if mm := promType.FindStringSubmatch(line); mm != nil {
			if !helped[mm[1]] {
				t.Errorf("line %d: TYPE of %s before its HELP", i+1, mm[1])
			}
			if _, dup := p.types[mm[1]]; dup {
				t.Errorf("line %d: second TYPE for %s", i+1, mm[1])
			}
			family = mm[1]
			p.types[family] = mm[2]
			continue
		}
		mm := promSample.FindStringSubmatch(line)
		if mm == nil {
			t.Fatalf("line %d is not Prometheus text format: %q", i+1, line)
		}
		name := mm[1]
		switch p.types[family] {
		case "histogram":
			if name != family+"_bucket" && name != family+"_sum" && name != family+"_count" {
				t.Errorf("line %d: sample %s in histogram %s", i+1, name, family)
			}
		default:
			if name != family {
				t.Errorf("line %d: sample %s under TYPE %s", i+1, name, family)
			}
		}
		labels := map[string]string{}
		var keys []string
		if mm[2] != "" {
			for _, l := range strings.Split(mm[2], ",") {
				lm := promLabel.FindStringSubmatch(l)
				if lm == nil {
					t.Fatalf("line %d: bad label %q", i+1, l)
				}
				if _, dup := labels[lm[1]]; dup {
					t.Fatalf("line %d: label %s twice", i+1, lm[1])
				}
				labels[lm[1]] = lm[2]
				keys = append(keys, lm[1])
			}
		}
		v, err := strconv.ParseFloat(mm[3], 64)
		if err != nil || math.IsNaN(v) || v < 0 {
			t.Fatalf("line %d: value %q", i+1, mm[3])
		}
		key := sampleKey(name, labels, keys)
		if _, dup := p.samples[key]; dup {
			t.Errorf("line %d: duplicate series %s", i+1, key)
		}
		p.samples[key] = v
		p.byName[name] = append(p.byName[name], labels)
	}
	return p
}

// sampleKey spells a series with its labels sorted by name.
func sampleKey(name string, labels map[string]string, keys []string) string {
	if len(keys) == 0 {
		return name
	}
	sorted := slices.Sorted(slices.Values(keys))
	parts := make([]string, len(sorted))
	for i, k := range sorted {
		parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

type promBucket struct{ le, count float64 }

// histogram returns the buckets of family for op, in exposition order.
func (p *prom) histogram(t *testing.T, family, op string) []promBucket {
	t.Helper()
	var out []promBucket
	for _, line := range strings.Split(p.text, "\n") {
		mm := promSample.FindStringSubmatch(line)
		if mm == nil || mm[1] != family+"_bucket" || !strings.Contains(mm[2], fmt.Sprintf("op=%q", op)) {
			continue
		}
		leM := regexp.MustCompile(`le="([^"]*)"`).FindStringSubmatch(mm[2])
		if leM == nil {
			t.Fatalf("bucket without le: %q", line)
		}
		le, err := strconv.ParseFloat(leM[1], 64)
		if err != nil {
			t.Fatalf("bucket le %q: %v", leM[1], err)
		}
		count, _ := strconv.ParseFloat(mm[3], 64)
		out = append(out, promBucket{le, count})
	}
	return out
}
