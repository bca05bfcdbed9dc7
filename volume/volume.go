package volume

import (
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// The data keys keyrings hand out are the keys blockcipher takes: this
// constant expression does not compile unless the two sizes are equal.
const _ = uint(blockcipher.DataKeySize-keyring.DataKeySize) + uint(keyring.DataKeySize-blockcipher.DataKeySize)

// Volume is an opened CIPHERDIR: its config and what follows from it.
type Volume struct {
	Dir    string  // CIPHERDIR, absolute
	Config *Config // validated
	Raw    []byte  // the config's bytes as read (nil for New)
	ID     [blockcipher.IDSize]byte
	IDHex  string
	Layout blockcipher.Layout
}

// Open reads and validates the config of the volume in dir. A directory
// without one is ErrNoConfig.
func Open(dir string) (*Volume, error) {
	c, raw, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	v, err := New(dir, c)
	if err != nil {
		return nil, err
	}
	v.Raw = raw
	return v, nil
}

// New returns the volume in dir described by c, which it validates. It
// reads nothing from dir.
func New(dir string, c *Config) (*Volume, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", dir, err)
	}
	id, _ := c.VolumeIDBytes() // validated
	return &Volume{Dir: abs, Config: c, ID: id, IDHex: c.VolumeID, Layout: c.Layout()}, nil
}

// FileContext is the encryption context of a file's data key in this
// volume (docs/FORMAT.md, "Encryption context").
func (v *Volume) FileContext(fileID [blockcipher.IDSize]byte) keyring.EncryptionContext {
	return keyring.FileContext(v.IDHex, hex.EncodeToString(fileID[:]))
}
