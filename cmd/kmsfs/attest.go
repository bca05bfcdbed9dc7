package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// attestScanLimit bounds the files attest reads the header of: the first
// mount of a large volume on a new machine stops looking after this many.
const attestScanLimit = 10000

// attest vouches for a volume config this machine has never seen (trust
// on first use) with the volume's own files: it looks for a file whose
// header carries a wrapped key for every keyring the config names, and
// unwraps each of them with its own keyring; every one must give the key
// the header commits to. Only someone who holds all the volume's keys can
// have wrapped one data key under each, so a keyring added to kmsfs.json
// by whoever can write CIPHERDIR, with a new volume ID or without, is not
// attested, and the mount is refused before a data key goes anywhere.
// Unwrapping costs one keyring call per keyring, once per machine. It
// returns the path of the file that attested the config.
func attest(ctx context.Context, vol *volume.Volume, members []keyring.Keyring) (string, error) {
	errFound, errLimit := errors.New("found"), errors.New("limit")
	scanned, found := 0, ""
	var keyErr error
	// A branch-key volume's branch key files are wrapped under every
	// keyring, from init on.
	ids, _ := vol.BranchIDs()
	for _, id := range ids[:min(len(ids), 16)] {
		scanned++
		h, err := vol.ReadBranch(id)
		if err != nil || !carriesAll(h, vol.Config.Keyrings) {
			continue
		}
		if err := unwrapEach(ctx, h, vol.BranchKeyContext(h), members); err != nil {
			keyErr = err
			continue
		}
		return volume.BranchStore + "/" + hex.EncodeToString(id[:]), nil
	}
	err := volume.Walk(vol.Dir, func(e volume.Entry) error {
		if !e.Type.IsRegular() {
			return nil
		}
		if scanned >= attestScanLimit {
			return errLimit
		}
		scanned++
		h := readHeaderAt(vol, e)
		if h == nil || !carriesAll(h, vol.Config.Keyrings) {
			return nil
		}
		if err := unwrapEach(ctx, h, vol.FileContext(h.FileID), members); err != nil {
			keyErr = err
			return nil
		}
		found = e.Rel
		return errFound
	})
	if found != "" {
		return found, nil
	}
	if err != nil && !errors.Is(err, errFound) && !errors.Is(err, errLimit) {
		return "", fail(exitVolume, "look for a file that attests %s: %v", volume.ConfigName, err)
	}
	if keyErr != nil {
		return "", keyError("this machine has no trusted copy of "+volume.ConfigName+trustedWhere()+", and checking it against the volume's files failed", keyErr)
	}
	return "", fail(exitVolume, "this machine has no trusted copy of %s%s, and no file of the volume (%d examined) has a data key wrapped under every keyring it names %s, so kmsfs cannot tell a config you made from one someone else put there. If this volume and these keys are yours, mount once with --trust-config",
		volume.ConfigName, trustedWhere(), scanned, keyringList(vol.Config.Keyrings))
}

// readHeaderAt reads the header of a file Walk visits; nil if it has none
// or it cannot be read.
func readHeaderAt(vol *volume.Volume, e volume.Entry) *blockcipher.Header {
	f, err := volume.OpenFile(e.DirFd, e.Name)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	h, err := vol.ReadHeader(f, st.Size())
	if err != nil {
		return nil
	}
	return h
}

// carriesAll reports whether h has an entry for every keyring of specs.
func carriesAll(h *blockcipher.Header, specs []volume.KeyringSpec) bool {
	have := map[[2]string]bool{}
	for _, w := range volume.Entries(h) {
		have[[2]string{string(w.Kind), w.KeyID}] = true
	}
	for _, s := range specs {
		id := s.KeyID
		if s.Kind == keyring.KindAWSKMS {
			id = s.KeyARN
		}
		if !have[[2]string{string(s.Kind), id}] {
			return false
		}
	}
	return true
}

// unwrapEach unwraps h's key under ec with each member separately and
// checks each result against h's key commitment and MAC. A recipient
// cannot unwrap: its entry (carriesAll saw it) is vouched for by the MAC,
// which only a holder of the data key, unwrapped by the others, can make.
func unwrapEach(ctx context.Context, h *blockcipher.Header, ec keyring.EncryptionContext, members []keyring.Keyring) error {
	entries := volume.Entries(h)
	checked := 0
	for _, m := range unwrappers(members, nil) {
		checked++
		dk, err := m.Decrypt(ctx, entries, ec)
		if err != nil {
			return fmt.Errorf("%s: %w", describe(m), err)
		}
		err = h.Verify(dk.Bytes())
		dk.Wipe()
		if err != nil {
			return fmt.Errorf("%s: %w", describe(m), err)
		}
	}
	if checked == 0 {
		return fmt.Errorf("no keyring of the volume can unwrap: %w", keyring.ErrNoUsableKey)
	}
	return nil
}

// trustedWhere names the folder a trusted copy was looked for in (a mount
// run by mount(8) or systemd may have another HOME than the user's).
func trustedWhere() string {
	if d, err := trustDir(); err == nil {
		return " (looked in " + d + ")"
	}
	return ""
}
