// Package blockcipher encodes kmsfs file headers, seals and opens the
// fixed-size blocks that follow them (XAES-256-GCM for header version 2,
// AES-256-GCM for version 1), and does the offset math between the
// plaintext and the stored file (Layout). The byte
// layout is specified in docs/FORMAT.md. Reading and writing a whole file
// (partial blocks, crash order, the journal) is package blockfile's.
//
// Invariants:
//
//   - Every seal draws a fresh random 96-bit AES-GCM nonce; nonces are
//     never derived or reused. For header version 2 the key it seals under
//     is derived (XAES-256-GCM) from the content key and a random 96-bit
//     key nonce a writer draws at most every sessionSeals seals, which
//     bounds the seals per derived key (docs/FORMAT.md, "Usage limits").
//   - The additional data of block i of a file is file ID ‖ uint64(i) ‖ last,
//     where last is 1 for the file's final block and 0 otherwise, so a block
//     cannot be moved to another file, another index, or (except after a
//     crash, see OpenRun) made the end of a truncated file.
//   - A block that fails its tag is never returned: the caller gets a
//     *BlockError wrapping ErrAuth and no plaintext.
//   - Content key, key commitment and header MAC key are derived from the data
//     key with HKDF-SHA256 (salt = file ID, one label each); the raw data key
//     never keys AES directly. The commitment is compared in constant time
//     before any block is opened.
//   - No copy of the data key or of a derived key is left behind: the
//     derivation and every MAC run in package secret, whose buffers are
//     cleared; a Cipher's keys (AES-GCM state, record MAC key) live until
//     Cipher.Wipe zeroes them.
//
// The package is pure: bytes in, bytes or error out. It knows nothing of
// FUSE, KMS or paths, and never logs. A Cipher is safe for concurrent use
// (but for Wipe).
package blockcipher
