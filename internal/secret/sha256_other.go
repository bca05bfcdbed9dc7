//go:build !amd64

package secret

const useSHANI = false

func compressSHANI(*[8]uint32, *byte) { panic("secret: no SHA extensions") }
