package main

import (
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// startProfiles starts the debugging aids asked for (--debug-cpuprofile,
// --debug-trace; an empty name is not asked for) and returns what stops
// them.
func startProfiles(cpuProfile, traceFile string) (stop func(), err error) {
	stopCPU, err := startDebugFile(cpuProfile, "--debug-cpuprofile", pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		return nil, err
	}
	stopTrace, err := startDebugFile(traceFile, "--debug-trace", trace.Start, trace.Stop)
	if err != nil {
		stopCPU()
		return nil, err
	}
	return func() { stopTrace(); stopCPU() }, nil
}

// startDebugFile creates name and starts writing a profile to it; the
// returned func stops the profile and closes the file.
func startDebugFile(name, flag string, start func(io.Writer) error, stop func()) (func(), error) {
	if name == "" {
		return func() {}, nil
	}
	// 0600: the mount runs with umask 0 (hardenProcess).
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fail(exitUsage, "%s: %v", flag, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fail(exitUsage, "%s: %v", flag, err)
	}
	return func() { stop(); f.Close() }, nil
}
