//go:build !linux

package kmstest

import "os/exec"

// startChild starts cmd. Only Linux offers a parent death signal: a killed
// test process may leave local-kms running.
func startChild(cmd *exec.Cmd) error { return cmd.Start() }
