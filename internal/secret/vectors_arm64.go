package secret

// zeroVectors zeroes V0–V31, the vector registers that the standard
// library's AES, GCM and memmove code may use on arm64.
//
//go:noescape
func zeroVectors()
