//go:build !linux

package kmstest

import "os/exec"

// setParentDeathSignal does nothing: only Linux offers a parent death
// signal. A killed test process may leave local-kms running.
func setParentDeathSignal(cmd *exec.Cmd) {}
