package main

import (
	"strings"
)

// keyedValue is a repeatable flag that sets a value for the KMS keys:
// VALUE alone for every KMS key (the only one, usually), or KEY=VALUE for
// the KMS key KEY (its ARN, its key ID, or the alias or ID it was given
// as), once per key. --kms-endpoint and --region are keyed values, so a
// volume with keys in two regions or behind two endpoints can name each.
type keyedValue struct {
	all   string
	byKey map[string]string
	keys  []string // in the order given
}

func (k *keyedValue) String() string {
	if k == nil {
		return ""
	}
	parts := []string{}
	if k.all != "" {
		parts = append(parts, k.all)
	}
	for _, key := range k.keys {
		parts = append(parts, key+"="+k.byKey[key])
	}
	return strings.Join(parts, ",")
}

// Set takes VALUE or KEY=VALUE. A URL has "://" before any "=", so an
// endpoint with a query is still VALUE alone.
func (k *keyedValue) Set(v string) error {
	i := strings.Index(v, "=")
	if i <= 0 || strings.Contains(v[:i], "://") {
		if k.all != "" {
			return errAgain
		}
		k.all = v
		return nil
	}
	key, val := v[:i], v[i+1:]
	if k.byKey == nil {
		k.byKey = map[string]string{}
	}
	if _, dup := k.byKey[key]; dup {
		return errAgain
	}
	k.byKey[key] = val
	k.keys = append(k.keys, key)
	return nil
}

type againError struct{}

func (againError) Error() string {
	return "given twice for the same key (use KEY=VALUE once per KMS key)"
}

var errAgain error = againError{}

// set reports whether any value was given.
func (k *keyedValue) set() bool { return k.all != "" || len(k.keys) > 0 }

// forKey returns the value for the KMS key known by any of names (its
// ARN, the ID or alias it was given as), or the value for every key, or
// "".
func (k *keyedValue) forKey(names ...string) string {
	for _, n := range names {
		if n == "" {
			continue
		}
		if v, ok := k.byKey[n]; ok {
			return v
		}
		if _, id, ok := strings.Cut(n, ":key/"); ok {
			if v, ok := k.byKey[id]; ok {
				return v
			}
		}
	}
	return k.all
}

// unknownKey returns a KEY of a KEY=VALUE that names none of keys (each
// a list of one key's names), or "".
func (k *keyedValue) unknownKey(keys [][]string) string {
	for _, key := range k.keys {
		found := false
		for _, names := range keys {
			for _, n := range names {
				_, id, _ := strings.Cut(n, ":key/")
				found = found || key == n || (id != "" && key == id)
			}
		}
		if !found {
			return key
		}
	}
	return ""
}
