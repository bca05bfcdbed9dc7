package secret

import (
	"reflect"
	"sync"
	"unsafe"
)

// Wipe zeroes the value a pointer in an interface points at, and reports
// whether it did: for the *aes.Block that aes.NewCipher returns, its key
// schedule; for the *gcm.GCM that cipher.NewGCM returns, its copy of that
// schedule and its table of powers of H. The standard library offers no
// way to wipe either.
//
// It zeroes only a type that holds no pointer at any depth (integers, and
// arrays and structs of them), whose memory is nothing but numbers:
// zeroing it cannot corrupt the garbage collector's view or reach another
// object. For anything else (nil, not a pointer, a type with pointers, as
// a BoringCrypto build's would be) it does nothing and returns false; the
// tests of this package fail then, so a Go release that changes these
// types is noticed. v must not be used afterwards, nor concurrently.
func Wipe(v any) bool {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || !pointerFreeCached(rv.Type().Elem()) {
		return false
	}
	zero(unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size()))
	return true
}

// checked caches pointerFree per type (reflect.Type to bool): a key is
// unwrapped, and a cipher wiped, once per file open.
var checked sync.Map

func pointerFreeCached(t reflect.Type) bool {
	if ok, found := checked.Load(t); found {
		return ok.(bool)
	}
	ok := pointerFree(t)
	checked.Store(t, ok)
	return ok
}

// pointerFree reports whether t holds only integers, at any depth.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	case reflect.Array:
		return pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}

// zero clears b. It is not inlined, so that the stores cannot be dropped
// as dead by a caller that does not read b again.
//
//go:noinline
func zero(b []byte) { clear(b) }
