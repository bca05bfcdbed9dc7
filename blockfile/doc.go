// Package blockfile reads and writes the plaintext of one stored kmsfs
// file at any offset and length, on top of blockcipher's block codec:
// partial blocks are read, merged and re-sealed; every change is ordered
// so that a process killed between (or in the middle of) any two of its
// stored writes leaves a readable file; and a block that keeps older bytes
// is rewritten through a small journal in the file (journal.go). The
// steps are listed in docs/FORMAT.md, "Crash consistency".
//
// Invariants:
//
//   - No plaintext byte of a block that fails authentication is returned.
//   - A change never leaves a block that fails authentication, except
//     blocks the change replaces entirely or adds past the old end.
//   - A full disk fails a change before any old byte changes (space is
//     reserved first, or the file is cut back).
//
// It knows nothing of FUSE, keys or paths: a File is a Cipher over a Store
// (an io.ReaderAt and io.WriterAt, *os.File or MemStore), and the caller
// serialises changes.
package blockfile
