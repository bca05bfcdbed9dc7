package keyring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// Metrics counts calls, errors and latency of the keyring it wraps, for
// the Prometheus endpoint (kmsfs mount --metrics-addr). Safe for
// concurrent use.
type Metrics struct {
	inner Keyring

	mu  sync.Mutex
	ops map[string]*opMetrics // guarded by mu; by operation name
}

type opMetrics struct {
	calls   int64
	errors  map[string]int64 // by error class
	buckets []int64          // latency histogram, cumulative at render
	sum     time.Duration
}

// latencyBuckets are the histogram's upper bounds in seconds.
var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

var (
	_ Keyring   = (*Metrics)(nil)
	_ Describer = (*Metrics)(nil)
)

// NewMetrics wraps inner.
func NewMetrics(inner Keyring) *Metrics {
	return &Metrics{inner: inner, ops: map[string]*opMetrics{}}
}

func (m *Metrics) observe(op string, start time.Time, err error) {
	d := time.Since(start)
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.ops[op]
	if o == nil {
		o = &opMetrics{errors: map[string]int64{}, buckets: make([]int64, len(latencyBuckets))}
		m.ops[op] = o
	}
	o.calls++
	o.sum += d
	for i, b := range latencyBuckets {
		if d.Seconds() <= b {
			o.buckets[i]++
			break
		}
	}
	if err != nil {
		o.errors[errorClass(err)]++
	}
}

// errorClass names an error by its sentinel, for a metric label.
func errorClass(err error) string {
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
	m.observe("generate_data_key", start, err)
	return dk, w, err
}

func (m *Metrics) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	start := time.Now()
	dk, err := m.inner.Decrypt(ctx, wrapped, ec)
	m.observe("decrypt", start, err)
	return dk, err
}

// Describe names the inner keyring.
func (m *Metrics) Describe() string {
	if d, ok := m.inner.(Describer); ok {
		return d.Describe()
	}
	return fmt.Sprintf("%T", m.inner)
}

// Calls returns how many calls of op ("generate_data_key", "decrypt") were
// made, and how many failed.
func (m *Metrics) Calls(op string) (calls, failed int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.ops[op]
	if o == nil {
		return 0, 0
	}
	for _, n := range o.errors {
		failed += n
	}
	return o.calls, failed
}

// WritePrometheus writes the metrics in the Prometheus text format.
func (m *Metrics) WritePrometheus(w io.Writer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := make([]string, 0, len(m.ops))
	for op := range m.ops {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	fmt.Fprintln(w, "# HELP kmsfs_keyring_calls_total Keyring calls by operation.")
	fmt.Fprintln(w, "# TYPE kmsfs_keyring_calls_total counter")
	for _, op := range ops {
		fmt.Fprintf(w, "kmsfs_keyring_calls_total{op=%q} %d\n", op, m.ops[op].calls)
	}
	fmt.Fprintln(w, "# HELP kmsfs_keyring_errors_total Failed keyring calls by operation and error class.")
	fmt.Fprintln(w, "# TYPE kmsfs_keyring_errors_total counter")
	for _, op := range ops {
		classes := make([]string, 0)
		for c := range m.ops[op].errors {
			classes = append(classes, c)
		}
		sort.Strings(classes)
		for _, c := range classes {
			fmt.Fprintf(w, "kmsfs_keyring_errors_total{op=%q,error=%q} %d\n", op, c, m.ops[op].errors[c])
		}
	}
	fmt.Fprintln(w, "# HELP kmsfs_keyring_call_seconds Keyring call latency.")
	fmt.Fprintln(w, "# TYPE kmsfs_keyring_call_seconds histogram")
	for _, op := range ops {
		o := m.ops[op]
		var cum int64
		for i, b := range latencyBuckets {
			cum += o.buckets[i]
			fmt.Fprintf(w, "kmsfs_keyring_call_seconds_bucket{op=%q,le=\"%g\"} %d\n", op, b, cum)
		}
		fmt.Fprintf(w, "kmsfs_keyring_call_seconds_bucket{op=%q,le=\"+Inf\"} %d\n", op, o.calls)
		fmt.Fprintf(w, "kmsfs_keyring_call_seconds_sum{op=%q} %g\n", op, o.sum.Seconds())
		fmt.Fprintf(w, "kmsfs_keyring_call_seconds_count{op=%q} %d\n", op, o.calls)
	}
}
