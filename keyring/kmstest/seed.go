package kmstest

import (
	"fmt"
	"strings"
)

// The account and region every Server runs as. ARNs below use them.
const (
	AccountID = "111122223333"
	Region    = "eu-west-2"
)

// The seeded keys. Key IDs are fixed, so ARNs are known before a server
// starts and are the same on every server (a blob wrapped by one server
// opens on another that has the same key material).
const (
	// KeyAID is a symmetric key with one backing key, the target of
	// AliasName.
	KeyAID  = "a0a0a0a0-0000-4000-8000-00000000000a"
	KeyAARN = "arn:aws:kms:" + Region + ":" + AccountID + ":key/" + KeyAID

	// KeyBID is a symmetric key rotated once: on a server from Start it has
	// two backing keys and wraps under the second, on a server from
	// StartBeforeRotation it has only the first.
	KeyBID  = "b0b0b0b0-0000-4000-8000-00000000000b"
	KeyBARN = "arn:aws:kms:" + Region + ":" + AccountID + ":key/" + KeyBID

	// AliasName names key A.
	AliasName = "alias/kmsfs-test"
	AliasARN  = "arn:aws:kms:" + Region + ":" + AccountID + ":" + AliasName
)

// Backing keys (the key material) of the seeded keys. Test keys only:
// they are public.
const (
	backingA  = "7a8f0c1e4b2d39566e7d8c9fa0b1c2d3e4f5061728394a5b6c7d8e9f0a1b2c3d"
	backingB0 = "1b2c3d4e5f60718293a4b5c6d7e8f9011223344556677889900aabbccddeeff0"
	backingB1 = "f0eeddccbbaa00998877665544332211f0e9d8c7b6a5948372615f4e3d2c1b0a"
)

// seedYAML is local-kms's seed file (see its README, "Seeding file
// format"). Several BackingKeys simulate a rotated key: local-kms wraps
// under the last one and records the backing key's index in each blob, so
// blobs made under an earlier one still open.
func seedYAML(rotatedB bool) string {
	backingsB := []string{backingB0}
	if rotatedB {
		backingsB = append(backingsB, backingB1)
	}
	return fmt.Sprintf(`Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: %s
          Description: kmsfs test key A
        BackingKeys:
          - %s
      - Metadata:
          KeyId: %s
          Description: kmsfs test key B
        BackingKeys:
          - %s
Aliases:
  - AliasName: %s
    TargetKeyId: %s
`, KeyAID, backingA, KeyBID, strings.Join(backingsB, "\n          - "), AliasName, KeyAID)
}

// seededKeys and seededAliases are what local-kms must report having
// imported from seedYAML.
const (
	seededKeys    = 2
	seededAliases = 1
)
