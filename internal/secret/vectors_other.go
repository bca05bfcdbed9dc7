//go:build !amd64 && !arm64

package secret

// vectorZeros is what zeroVectors copies: 256 bytes, which memmove
// moves through every vector register it uses for sizes up to 256.
var vectorZeros, vectorSink [256]byte

// zeroVectors overwrites the vector registers that memmove uses with
// zeros, by copying zeros (best effort: on amd64 and arm64 it is
// assembly that zeroes every vector register the AES code uses).
//
//go:noinline
func zeroVectors() { copy(vectorSink[:], vectorZeros[:]) }
