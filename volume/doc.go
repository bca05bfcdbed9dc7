// Package volume owns a kmsfs volume's on-disk layout beyond the bytes of
// one file: the volume config (kmsfs.json), reading a file's header and
// building a new one, the names kmsfs keeps for itself in CIPHERDIR, and
// walking CIPHERDIR. The FUSE filesystem (package fs) and every offline
// command share it; it knows nothing of FUSE. docs/FORMAT.md is the
// specification.
//
// Invariants:
//
//   - CIPHERDIR is hostile input. The config is opened without following a
//     symlink or blocking, must be a regular file, is read up to a bound
//     and parsed strictly; a walk never follows a symlink, at any depth.
//   - A header is accepted for a volume only if it names the volume's ID
//     and geometry. Its authenticity (key commitment, MAC) is checked by
//     blockcipher once a data key is unwrapped; this package reads
//     structure only.
//   - The mapping between keyring kinds and the kind codes stored in
//     headers lives here and nowhere else.
//
// A Volume is immutable once opened and safe for concurrent use.
package volume
