// Package fs is the kmsfs FUSE filesystem: a go-fuse node tree that mirrors
// CIPHERDIR, decrypting regular files on read and encrypting them on write.
//
// Invariants:
//
//   - Every backing operation is relative to one O_PATH descriptor of
//     CIPHERDIR (*at syscalls), so plaintext paths up to PATH_MAX work
//     whatever CIPHERDIR's own path length, and nothing is resolved through
//     a symlink outside the tree.
//   - An inode's data key is unwrapped once, on the first open, shared by
//     all its handles, and wiped when the last handle is released
//     (fileState). Concurrent first opens share one keyring call.
//   - No keyring call for stat, readdir, rename, chmod, chown, link,
//     symlink or unlink: sizes follow from stored sizes (blockcipher.Layout).
//   - Keyring calls run under the root's own deadline, never the FUSE
//     request's context, which the kernel cancels on signals.
//   - File contents change only under the inode's content lock held for
//     writing; reads hold it for reading. There is no global lock on the
//     data path.
//   - Errors become errnos in one place, errno.go.
//   - The volume config (kmsfs.json) and temporary names are hidden from the
//     plaintext view and cannot be created through it.
package fs
