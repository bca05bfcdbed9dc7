package main

// Exit codes: the one table scripts can rely on.
const (
	exitOK       = 0
	exitError    = 1  // anything not listed below
	exitUsage    = 2  // bad flags or arguments
	exitVolume   = 10 // CIPHERDIR missing, not a volume, unsupported version, or (init) not empty
	exitKey      = 11 // a key cannot be loaded or used: key file, KMS access, disabled key
	exitMount    = 12 // the mount failed: bad or busy mountpoint, no FUSE
	exitInspect  = 13 // inspect: not a kmsfs file, or a damaged header
	exitUnmount  = 14 // unmount failed
	exitDamage   = 15 // fsck found problems; cat or export met a damaged file or block
	exitInternal = 99 // a bug
)
