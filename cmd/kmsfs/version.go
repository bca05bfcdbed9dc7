package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version the build recorded, else "dev".
var version = "dev"

// versionLine says which kmsfs this is: `kmsfs VERSION (revision REV,
// GOVERSION)`, from runtime/debug.ReadBuildInfo. A build from a checkout
// without VCS stamping (go build -buildvcs=false) has version and
// revision "dev"; a revision built from a changed tree ends in
// "-modified".
func versionLine() string {
	v, rev := version, "dev"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && rev != "dev" {
			rev += "-modified"
		}
	}
	return fmt.Sprintf("kmsfs %s (revision %s, %s)", v, rev, runtime.Version())
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("version", "", stdout)
	pos, err := parsePositional(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fail(exitUsage, "version takes no arguments")
	}
	fmt.Fprintln(stdout, versionLine())
	return nil
}
