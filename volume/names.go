package volume

import "strings"

// TempPrefix starts the names of temporary files kmsfs makes anywhere in
// CIPHERDIR. They are not part of the plaintext view.
const TempPrefix = ".kmsfs-tmp-"

// configTempPrefix starts the temporary name of a config being written.
const configTempPrefix = ".kmsfs.json.tmp-"

// Reserved reports whether name, in CIPHERDIR's root when atRoot, is one
// of kmsfs's own: the config, or a temporary file. Reserved names are
// hidden from the plaintext view, cannot be made through it, and are
// skipped by Walk.
func Reserved(atRoot bool, name string) bool {
	if strings.HasPrefix(name, TempPrefix) {
		return true
	}
	return atRoot && (name == ConfigName || strings.HasPrefix(name, configTempPrefix))
}
