package keyring

// NewLocalFromBytes builds a Local keyring from raw key bytes, for the
// external tests of this package.
var NewLocalFromBytes = newLocalFromBytes
