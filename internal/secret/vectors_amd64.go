package secret

// zeroVectors zeroes X0–X15, the vector registers that the standard
// library's AES, GCM and memmove code use on amd64 (SSE only: none of
// it touches the YMM or ZMM upper halves, nor X16–X31).
//
//go:noescape
func zeroVectors()
