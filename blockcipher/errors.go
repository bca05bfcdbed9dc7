package blockcipher

import (
	"errors"
	"fmt"
)

var (
	// ErrAuth: a block failed authentication (tampered, moved, truncated or
	// written under another key).
	ErrAuth = errors.New("block authentication failed")
	// ErrHeaderAuth: the header's key commitment or MAC does not match the
	// unwrapped data key (tampered header, or a header whose wrapped keys do
	// not all hold the same key).
	ErrHeaderAuth = errors.New("header authentication failed")

	// The causes a *FormatError wraps.
	ErrBadMagic           = errors.New("not a kmsfs file (bad magic)")
	ErrUnsupportedVersion = errors.New("unsupported format version")
	ErrTruncated          = errors.New("truncated")
	ErrMalformed          = errors.New("malformed")
)

// FormatError reports stored bytes that do not follow docs/FORMAT.md.
// Err is one of ErrBadMagic, ErrUnsupportedVersion, ErrTruncated,
// ErrMalformed.
type FormatError struct {
	Field string // which field, e.g. "magic", "wrapped key 2 blob"
	Err   error
	Msg   string // detail, may be empty
}

func (e *FormatError) Error() string {
	s := "header " + e.Field + ": " + e.Err.Error()
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(field string, err error, format string, args ...any) error {
	return &FormatError{Field: field, Err: err, Msg: fmt.Sprintf(format, args...)}
}

// BlockError names the block that failed. It wraps ErrAuth.
type BlockError struct {
	Block uint64
	Err   error
}

func (e *BlockError) Error() string { return fmt.Sprintf("block %d: %v", e.Block, e.Err) }
func (e *BlockError) Unwrap() error { return e.Err }
