//go:build !linux

package secret

// blockSignals blocks nothing where kmsfs does not run (it is a Linux
// FUSE filesystem); Shield still zeroes the registers after f.
func blockSignals() (old uint64, ok bool) { return 0, false }

func restoreSignals(uint64) {}
