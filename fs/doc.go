// Package fs is the kmsfs FUSE filesystem: a go-fuse node tree that mirrors
// CIPHERDIR, decrypting regular files on read and encrypting them on write.
//
// Invariants:
//
//   - Every backing operation names its object as (parent directory's
//     O_PATH descriptor, name) with *at syscalls and O_NOFOLLOW (at.go), so
//     plaintext paths up to PATH_MAX work whatever CIPHERDIR's own path
//     length, and nothing is resolved through a symlink.
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
//   - A new file is empty until its first write, which writes its header
//     (no keyring call at create, so a slow KMS never stalls a directory).
//   - The volume config (kmsfs.json) and temporary names are hidden from the
//     plaintext view and cannot be created through it.
package fs
