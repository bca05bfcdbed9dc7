package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
	"github.com/kmsfs/kmsfs/keyring"
)

// Errnos are chosen here and nowhere else.
//
//	a syscall.Errno, wrapped or not      itself (logged at debug level)
//	keyring.ErrAccessDenied              EACCES  the key policy or credentials refuse us
//	keyring.ErrKeyDisabled               EACCES  the key is disabled or pending deletion
//	keyring.ErrKeyNotFound               EACCES  the key no longer exists
//	keyring.ErrInvalidCiphertext         EIO     wrapped key damaged, or from another file or volume
//	keyring.ErrNoUsableKey               EIO     the header names no key this volume trusts
//	keyring.ErrUnreachable, ErrThrottled EIO     after the keyring's bounded retries
//	blockcipher.ErrAuth, ErrHeaderAuth   EIO     tampered or damaged content
//	*blockcipher.FormatError             EIO     not a kmsfs file, or a damaged header
//	blockfile.ErrOutOfRange              EFBIG   past the largest file kmsfs stores (2^60 bytes)
//	anything else                        EIO
//
// Every failure but a plain errno is logged once, with the operation, the
// path and the reason; never key bytes (no error here carries any).
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	var fe *blockcipher.FormatError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, blockfile.ErrOutOfRange):
		return syscall.EFBIG
	case errors.Is(err, keyring.ErrAccessDenied),
		errors.Is(err, keyring.ErrKeyDisabled),
		errors.Is(err, keyring.ErrKeyNotFound):
		return syscall.EACCES
	case errors.Is(err, blockcipher.ErrAuth),
		errors.Is(err, blockcipher.ErrHeaderAuth),
		errors.As(err, &fe):
		return syscall.EIO
	}
	return syscall.EIO
}

// errno maps err and logs it: at debug level for a plain errno that
// applications meet every day (ENOENT, EEXIST...), as a warning for anything
// else (EIO, ENOSPC, a keyring or integrity failure).
func (r *Root) errno(err error, op, path string, attrs ...any) syscall.Errno {
	return r.logErrno(err, serious, op, path, attrs...)
}

// metaErrno is errno for metadata operations (xattrs), where ENOSPC or
// E2BIG mean "value too large" and every plain errno is ordinary.
func (r *Root) metaErrno(err error, op, path string) syscall.Errno {
	return r.logErrno(err, nil, op, path)
}

func (r *Root) logErrno(err error, serious map[syscall.Errno]bool, op, path string, attrs ...any) syscall.Errno {
	e := errnoOf(err)
	if e == 0 {
		return 0
	}
	r.stats.countIntegrity(err)
	level := slog.LevelWarn
	var plain syscall.Errno
	if errors.As(err, &plain) && plain == e && !serious[e] || errors.Is(err, blockfile.ErrOutOfRange) {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if level == slog.LevelWarn && r.warned.repeat(path, e, err, attrs) {
		// Said already: a damaged block is read again by readahead,
		// by the application's retry, by the next reader.
		level = slog.LevelDebug
	}
	if r.log.Enabled(ctx, level) {
		args := append([]any{"op", op, "path", path, "errno", e.Error(), "err", err.Error()}, attrs...)
		r.log.Log(ctx, level, "operation failed", args...)
	}
	return e
}

// warnLimiter lets one warning through per file, errno, reason and block
// (when the failure names one) per warnWindow, so one cat of a damaged
// file logs one line, not one per read of the block. Safe for concurrent
// use.
type warnLimiter struct {
	mu   sync.Mutex
	seen map[string]time.Time // guarded by mu
}

const (
	warnWindow = 10 * time.Minute
	warnKeys   = 4096 // beyond this many, the oldest are forgotten
)

// repeat reports whether a warning with this key was let through within
// warnWindow, and records it otherwise.
func (w *warnLimiter) repeat(path string, e syscall.Errno, err error, attrs []any) bool {
	key := path + "\x00" + e.Error() + "\x00" + err.Error()
	for i := 0; i+1 < len(attrs); i += 2 {
		if attrs[i] == "block" {
			key += "\x00" + fmt.Sprint(attrs[i+1])
		}
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if at, ok := w.seen[key]; ok && now.Sub(at) < warnWindow {
		return true
	}
	if w.seen == nil {
		w.seen = map[string]time.Time{}
	}
	if len(w.seen) >= warnKeys {
		for k, at := range w.seen {
			if now.Sub(at) >= warnWindow || len(w.seen) >= warnKeys {
				delete(w.seen, k)
			}
		}
	}
	w.seen[key] = now
	return false
}

// serious errnos are logged as warnings even when the backing filesystem
// returned them: they mean lost writes or a broken disk.
var serious = map[syscall.Errno]bool{
	syscall.EIO: true, syscall.ENOSPC: true, syscall.EDQUOT: true, syscall.ENOMEM: true, syscall.EUCLEAN: true,
}
