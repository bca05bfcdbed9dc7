package main

import (
	"testing"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// Key readahead is off by default only where every unwrap is local.
func TestLocalOnly(t *testing.T) {
	local := volume.KeyringSpec{Kind: keyring.KindLocal}
	kms := volume.KeyringSpec{Kind: keyring.KindAWSKMS}
	for _, c := range []struct {
		keyrings []volume.KeyringSpec
		want     bool
	}{
		{[]volume.KeyringSpec{local}, true},
		{[]volume.KeyringSpec{local, local}, true},
		{[]volume.KeyringSpec{kms}, false},
		{[]volume.KeyringSpec{local, kms}, false},
		{nil, false},
	} {
		if got := localOnly(&volume.Config{Keyrings: c.keyrings}); got != c.want {
			t.Errorf("localOnly(%v) = %v, want %v", c.keyrings, got, c.want)
		}
	}
}
