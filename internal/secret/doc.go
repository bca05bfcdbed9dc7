// Package secret computes on key material without leaving copies of it
// behind: HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) over its own
// SHA-256 (FIPS 180-4); Wipe, which zeroes the key schedule behind a
// crypto/cipher interface; and Shield (with AESGCM and AESBlock built
// under it), which keeps the standard library's AES code from leaving a
// key in a signal frame.
//
// The standard library's crypto/hmac and crypto/hkdf are correct but keep
// what they hash: a key's ipad and opad blocks in the hmac.Hash, the
// input key material in a sha256 digest's block buffer, and every output
// (a derived key) in the digest state and in the stack frame of Sum.
// None of that memory is ever cleared, so it stays readable until the
// heap or the stack reuses it.
//
// Invariants:
//
//   - Every secret byte (input, key pads, chaining state, message
//     schedule, pseudorandom key, outputs until copied out) lives in one
//     heap-allocated work area, reached through pointers and never copied
//     by value onto a stack, so a goroutine stack that grows or shrinks
//     cannot carry a copy away. The work area is zeroed before it returns
//     to its pool. What a computation leaves on a stack is at most spilled
//     32-bit working variables of SHA-256's rounds.
//   - Secret bytes move a byte at a time through general-purpose
//     registers (Copy), never through the vector registers of copy or of
//     an array or struct assignment, which keep them after the copy and
//     which every signal the thread takes saves in memory.
//   - Outputs are bit-identical to crypto/hmac and crypto/hkdf with
//     crypto/sha256 (tested against them and RFC 5869's vectors).
//
// The package imports only the standard library; it is part of
// blockcipher's and keyring's key handling, which share it.
package secret
