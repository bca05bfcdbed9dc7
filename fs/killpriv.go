package fs

import "github.com/hanwen/go-fuse/v2/fuse"

// killPrivFS sits between go-fuse's request loop and its node bridge to
// carry out the one duty the kernel hands over with
// CAP_HANDLE_KILLPRIV_V2 that the bridge cannot see: a WRITE flagged
// WRITE_KILL_SUIDGID (the writer lacks CAP_FSETID) must clear the file's
// set-user-ID and set-group-ID bits, before the data lands, as a local
// filesystem does.
//
// What the capability buys: without it the kernel asks for
// security.capability before every write (a whole FUSE round trip, half
// the cost of a small write); with it the superblock is SB_NOSEC and the
// kernel asks once per inode until its attributes change, and still
// removes a present security.capability itself.
type killPrivFS struct {
	fuse.RawFileSystem
}

func (k killPrivFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if st := k.kill(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k killPrivFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if st := k.kill(cancel, in); !st.Ok() {
		return 0, st
	}
	return k.RawFileSystem.Writev(cancel, in, data)
}

// kill passes the flag on as a SETATTR through the same handle, which
// node.Setattr answers with killSUIDGID.
func (k killPrivFS) kill(cancel <-chan struct{}, in *fuse.WriteIn) fuse.Status {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return fuse.OK
	}
	sa := fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{
		InHeader: in.InHeader,
		Valid:    fuse.FATTR_FH | fuse.FATTR_KILL_SUIDGID,
		Fh:       in.Fh,
	}}
	var out fuse.AttrOut
	return k.RawFileSystem.SetAttr(cancel, &sa, &out)
}
