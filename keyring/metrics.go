package keyring

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Metrics counts the calls, results and latency of the keyring it wraps.
// It keeps plain counters: cmd/kmsfs exports a Snapshot to Prometheus, so
// this package does not depend on a metrics library. Safe for concurrent
// use.
type Metrics struct {
	inner Keyring

	mu  sync.Mutex
	ops map[string]*opMetrics // guarded by mu; by operation name
}

type opMetrics struct {
	results map[string]int64 // by result: "ok" or an error class
	buckets []int64          // calls by latency bucket, not cumulative
	count   int64
	sum     time.Duration
}

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histogram in an OpStats.
var LatencyBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Operation names in an OpStats.
const (
	OpGenerateDataKey = "generate_data_key"
	OpDecrypt         = "decrypt"
	OpWrap            = "wrap" // wrapping an existing key (a Multi's further members)
)

// ResultOK is the result of a call that succeeded; a failed one's is its
// error class (ErrorClass).
const ResultOK = "ok"

var (
	_ Keyring   = (*Metrics)(nil)
	_ Wrapper   = (*Metrics)(nil)
	_ Describer = (*Metrics)(nil)
)

// NewMetrics wraps inner.
func NewMetrics(inner Keyring) *Metrics {
	return &Metrics{inner: inner, ops: map[string]*opMetrics{}}
}

func (m *Metrics) observe(op string, start time.Time, err error) {
	d := time.Since(start)
	result := ResultOK
	if err != nil {
		result = ErrorClass(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.ops[op]
	if o == nil {
		o = &opMetrics{results: map[string]int64{}, buckets: make([]int64, len(LatencyBuckets))}
		m.ops[op] = o
	}
	o.results[result]++
	o.count++
	o.sum += d
	for i, b := range LatencyBuckets {
		if d.Seconds() <= b {
			o.buckets[i]++
			break
		}
	}
}

// ErrorClass names an error by its sentinel, for a metric label:
// access_denied, key_disabled, key_not_found, invalid_ciphertext,
// unreachable, throttled, no_usable_key, canceled, or other.
func ErrorClass(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{
		{ErrAccessDenied, "access_denied"}, {ErrKeyDisabled, "key_disabled"}, {ErrKeyNotFound, "key_not_found"},
		{ErrInvalidCiphertext, "invalid_ciphertext"}, {ErrUnreachable, "unreachable"}, {ErrThrottled, "throttled"},
		{ErrNoUsableKey, "no_usable_key"}, {context.Canceled, "canceled"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "other"
}

func (m *Metrics) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	start := time.Now()
	dk, w, err := m.inner.GenerateDataKey(ctx, ec)
	m.observe(OpGenerateDataKey, start, err)
	return dk, w, err
}

func (m *Metrics) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	start := time.Now()
	dk, err := m.inner.Decrypt(ctx, wrapped, ec)
	m.observe(OpDecrypt, start, err)
	return dk, err
}

// Wrap wraps dk with the inner keyring, which must be a Wrapper, so a
// Metrics can stand for any member of a Multi.
func (m *Metrics) Wrap(ctx context.Context, dk *DataKey, ec EncryptionContext) (WrappedKey, error) {
	w, ok := m.inner.(Wrapper)
	if !ok {
		return WrappedKey{}, fmt.Errorf("keyring %T cannot wrap an existing key", m.inner)
	}
	start := time.Now()
	wk, err := w.Wrap(ctx, dk, ec)
	m.observe(OpWrap, start, err)
	return wk, err
}

// Describe names the inner keyring.
func (m *Metrics) Describe() string {
	if d, ok := m.inner.(Describer); ok {
		return d.Describe()
	}
	return fmt.Sprintf("%T", m.inner)
}

// Calls returns how many calls of op were made, and how many failed.
func (m *Metrics) Calls(op string) (calls, failed int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.ops[op]
	if o == nil {
		return 0, 0
	}
	return o.count, o.count - o.results[ResultOK]
}

// OpStats is a snapshot of one operation's counts.
type OpStats struct {
	Op      string
	Results map[string]int64 // calls by result: ResultOK or an error class
	Count   int64            // all calls
	Buckets []int64          // calls at most LatencyBuckets[i] long: cumulative
	Sum     time.Duration    // of all calls
}

// Snapshot returns the counts of every operation called so far, sorted by
// operation name.
func (m *Metrics) Snapshot() []OpStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]OpStats, 0, len(m.ops))
	for op, o := range m.ops {
		s := OpStats{Op: op, Results: make(map[string]int64, len(o.results)), Count: o.count,
			Buckets: make([]int64, len(o.buckets)), Sum: o.sum}
		for r, n := range o.results {
			s.Results[r] = n
		}
		var cum int64
		for i, n := range o.buckets {
			cum += n
			s.Buckets[i] = cum
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Op < out[j].Op })
	return out
}
