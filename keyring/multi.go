package keyring

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Wrapper is implemented by keyrings that can wrap an existing data key
// (KMS Encrypt, Local). Multi needs it from every member but the first.
type Wrapper interface {
	Wrap(ctx context.Context, dk *DataKey, ec EncryptionContext) (WrappedKey, error)
}

// Multi wraps every data key under several keyrings, so that any one of them
// can unwrap it: a second region, a recovery key kept offline. The first
// member generates the key; the others wrap it. Decrypt tries the members in
// order and returns the first success. Safe for concurrent use if the
// members are.
type Multi struct {
	members []Keyring
}

var (
	_ Keyring   = (*Multi)(nil)
	_ Describer = (*Multi)(nil)
)

// NewMulti returns a Multi over members. Every member after the first must
// implement Wrapper.
func NewMulti(members ...Keyring) (*Multi, error) {
	if len(members) == 0 {
		return nil, errors.New("multi keyring needs at least one member")
	}
	for i, m := range members[1:] {
		if _, ok := m.(Wrapper); !ok {
			return nil, fmt.Errorf("multi keyring member %d (%T) cannot wrap an existing key", i+2, m)
		}
	}
	return &Multi{members: members}, nil
}

// Members returns the member keyrings in order.
func (m *Multi) Members() []Keyring { return m.members }

// GenerateDataKey generates with the first member and wraps the same key
// under every other member. Any member failing fails the call: a file must
// never be written with fewer wrapped copies than the volume promises.
func (m *Multi) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	dk, wrapped, err := m.members[0].GenerateDataKey(ctx, ec)
	if err != nil {
		return nil, nil, err
	}
	for _, member := range m.members[1:] {
		w, err := member.(Wrapper).Wrap(ctx, dk, ec)
		if err != nil {
			dk.Wipe()
			return nil, nil, err
		}
		wrapped = append(wrapped, w)
	}
	return dk, wrapped, nil
}

// Wrap wraps dk under every member that can wrap.
func (m *Multi) Wrap(ctx context.Context, dk *DataKey, ec EncryptionContext) ([]WrappedKey, error) {
	var out []WrappedKey
	for _, member := range m.members {
		w, ok := member.(Wrapper)
		if !ok {
			return nil, fmt.Errorf("multi keyring member %T cannot wrap an existing key", member)
		}
		wk, err := w.Wrap(ctx, dk, ec)
		if err != nil {
			return nil, err
		}
		out = append(out, wk)
	}
	return out, nil
}

// Decrypt tries each member in order. If all fail, the error joins every
// member's error, so errors.Is finds e.g. ErrAccessDenied from any of them;
// members that found no entry of theirs are left out unless all did.
func (m *Multi) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	var errs []error
	noUsable := 0
	for _, member := range m.members {
		dk, err := member.Decrypt(ctx, wrapped, ec)
		if err == nil {
			return dk, nil
		}
		if errors.Is(err, ErrNoUsableKey) {
			noUsable++
			continue
		}
		errs = append(errs, err)
	}
	if noUsable == len(m.members) {
		return nil, fmt.Errorf("multi keyring: %w", ErrNoUsableKey)
	}
	return nil, errors.Join(errs...)
}

// Describe lists the members.
func (m *Multi) Describe() string {
	parts := make([]string, len(m.members))
	for i, member := range m.members {
		if d, ok := member.(Describer); ok {
			parts[i] = d.Describe()
		} else {
			parts[i] = fmt.Sprintf("%T", member)
		}
	}
	return "multi[" + strings.Join(parts, ", ") + "]"
}
