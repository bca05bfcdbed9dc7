package volume

import "strings"

// TempPrefix starts the names of temporary files kmsfs makes anywhere in
// CIPHERDIR. They are not part of the plaintext view.
const TempPrefix = ".kmsfs-tmp-"

// configTempPrefix starts the temporary name of a config being written.
const configTempPrefix = ".kmsfs.json.tmp-"

// StoreName is the directory at CIPHERDIR's root where kmsfs keeps the
// volume's own keys: the branch key files (branch.go).
const StoreName = ".kmsfs"

// Reserved reports whether name, in CIPHERDIR's root when atRoot, is one
// of kmsfs's own: the config, the key store, or a temporary file.
// Reserved names are hidden from the plaintext view, cannot be made
// through it, and are skipped by Walk.
func Reserved(atRoot bool, name string) bool {
	if strings.HasPrefix(name, TempPrefix) {
		return true
	}
	return atRoot && (name == ConfigName || name == StoreName || strings.HasPrefix(name, configTempPrefix))
}
