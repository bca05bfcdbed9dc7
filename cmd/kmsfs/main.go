// Command kmsfs keeps a directory encrypted at rest under per-file data
// keys from AWS KMS (or a local key file), and mounts its plaintext view
// with FUSE.
//
//	kmsfs init [flags] CIPHERDIR          make a new volume
//	kmsfs mount [flags] CIPHERDIR MNT     mount it (foreground; -d to detach)
//	kmsfs unmount MNT                     unmount it
//	kmsfs inspect CIPHERFILE              print a file's header as JSON
//	kmsfs rewrap [flags] CIPHERDIR        replace a volume's keyrings
//	kmsfs info CIPHERDIR                  print a volume's settings as JSON
//	kmsfs fsck CIPHERDIR                  check every header and block
//	kmsfs cat FILE...                     decrypt stored files to stdout
//	kmsfs export CIPHERDIR DEST           decrypt a whole volume into DEST
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `kmsfs: a directory encrypted at rest under AWS KMS data keys, mounted with FUSE

usage:
  kmsfs init [--kms-key KEY]... [--region R] [--kms-endpoint URL] [--local-key FILE]
             [--recipient AGE]... [--branch-keys [--branch-key-rotation D]] [--block-size N] CIPHERDIR
  kmsfs mount [--read-only] [--allow-other] [--nonempty] [--idle D] [--key-cache-ttl D]
              [--metrics-addr HOST:PORT] [--log-level L] [--trust-config] [-d|--daemon] CIPHERDIR MOUNTPOINT
  kmsfs unmount MOUNTPOINT
  kmsfs inspect CIPHERFILE
  kmsfs rewrap [--kms-key KEY]... [--local-key FILE] [--recipient AGE]... [--identity FILE]
               [--parallel N] [--dry-run] [--json] CIPHERDIR
  kmsfs info CIPHERDIR
  kmsfs fsck [--json] [--repair] CIPHERDIR
  kmsfs cat [-C CIPHERDIR] [--keep-going] FILE...
  kmsfs export [--keep-going] CIPHERDIR DEST
  kmsfs version

mount, rewrap, fsck, cat and export also take --local-key FILE, --kms-endpoint
URL, --region R and --trust-config; rewrap, fsck, cat and export take
--identity FILE (an age recovery key) too.

Run "kmsfs COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// cliError carries an exit code and one line for stderr that says what to do.
type cliError struct {
	code int
	msg  string
}

func (e *cliError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &cliError{code: code, msg: fmt.Sprintf(format, args...)}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "init":
		err = cmdInit(args[1:], stdout, stderr)
	case "mount":
		err = cmdMount(args[1:], stdout, stderr)
	case "unmount", "umount":
		err = cmdUnmount(args[1:], stdout, stderr)
	case "inspect":
		err = cmdInspect(args[1:], stdout, stderr)
	case "rewrap":
		err = cmdRewrap(args[1:], stdout, stderr)
	case "fsck":
		err = cmdFsck(args[1:], stdout, stderr)
	case "cat":
		err = cmdCat(args[1:], stdout, stderr)
	case "export":
		err = cmdExport(args[1:], stdout, stderr)
	case "info":
		err = cmdInfo(args[1:], stdout, stderr)
	case "version", "--version":
		err = cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		if !isMountHelperCall(args) {
			fmt.Fprintf(stderr, "kmsfs: unknown command %q\n%s", args[0], usage)
			return exitUsage
		}
		// mount(8) and fstab: kmsfs CIPHERDIR MOUNTPOINT -o OPTIONS.
		err = cmdMountHelper(args, stdout, stderr)
	}
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ce *cliError
	if errors.As(err, &ce) {
		fmt.Fprintln(stderr, "kmsfs:", oneLine(ce.msg))
		return ce.code
	}
	fmt.Fprintln(stderr, "kmsfs:", oneLine(err.Error()))
	return exitError
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (kmsfs mount CIPHERDIR MNT --read-only), and checks
// the number of positional arguments.
func parseArgs(fs *flag.FlagSet, args []string, names ...string) ([]string, error) {
	pos, err := parsePositional(fs, args)
	if err == nil && len(pos) != len(names) {
		err = fail(exitUsage, "%s needs %s (see kmsfs %s -h)", fs.Name(), strings.Join(names, " and "), fs.Name())
	}
	return pos, err
}

// parsePositional parses flags wherever they are, as parseArgs does, and
// returns the positional arguments, however many.
func parsePositional(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				helps[fs]()
				return nil, err
			}
			return nil, fail(exitUsage, "%s (see kmsfs %s -h)", flagErrorText(fs, err), fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return pos, nil
}

// flagErrorText is the flag package's error, spelled with the README's
// --name, and with the form a duration takes where one did not parse.
func flagErrorText(fs *flag.FlagSet, err error) string {
	msg := strings.Replace(err.Error(), " -", " --", 1)
	if i := strings.Index(msg, "for flag --"); i >= 0 {
		name, _, _ := strings.Cut(msg[i+len("for flag --"):], ":")
		if f := fs.Lookup(name); f != nil && fmt.Sprintf("%T", f.Value) == "*flag.durationValue" {
			msg += ": a duration has a unit, as in 90s, 15m or 24h"
		}
	}
	return msg
}

// newFlagSet makes a flag set for a command. Parsing prints nothing:
// parseArgs turns an error into the one line every kmsfs error is, and -h
// into the usage on stdout (asked for, so output, not an error).
func newFlagSet(name, synopsis string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // called by Parse on every error, not only -h
	helps[fs] = func() {
		fmt.Fprintf(stdout, "usage: kmsfs %s\n", strings.TrimSpace(name+" "+synopsis))
		printFlags(stdout, fs)
	}
	return fs
}

// printFlags lists a command's flags as the README spells them: --name
// (-d for a one-letter name), its argument, what it does, and its default
// where it has one.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprint(w, "\nflags:\n")
			first = false
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		arg, usage := flag.UnquoteUsage(f)
		if arg == "value" { // a flag.Value without a `NAME` in its usage
			arg = "VALUE"
		}
		if arg != "" {
			arg = " " + arg
		}
		def := ""
		switch d := f.DefValue; {
		case d == "" || d == "0" || d == "false" || d == "0s":
		case fmt.Sprintf("%T", f.Value) == "*flag.stringValue":
			def = fmt.Sprintf(" (default %q)", d)
		default:
			def = fmt.Sprintf(" (default %s)", d)
		}
		fmt.Fprintf(w, "  %s%s%s\n    \t%s%s\n", dash, f.Name, arg, strings.ReplaceAll(usage, "\n", "\n    \t"), def)
	})
}

// helps holds each flag set's usage printer (one command runs per process).
var helps = map[*flag.FlagSet]func(){}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
