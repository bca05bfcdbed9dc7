package main

import (
	"flag"
	"io"
	"os"
	"strings"
)

// The mount(8) form. For an fstab line or `mount -t fuse.kmsfs CIPHERDIR
// MOUNTPOINT -o OPTIONS`, mount(8) runs fuse3's mount.fuse3, which runs
//
//	kmsfs CIPHERDIR MOUNTPOINT -o OPTIONS
//
// (the program named after "fuse.", found on a PATH that mount(8) resets to
// the system's: install kmsfs in /usr/local/bin or /usr/bin) and waits for
// it to exit. So this form mounts as `kmsfs mount -d` does, returning once
// the mount is up, with each mount flag spelled as an option: --key-cache-ttl
// 30s as key_cache_ttl=30s, --allow-other as allow_other. Options meant for
// mount(8), systemd or the kernel's generic mount flags are ignored; any
// other is refused, in one line, rather than mounting without it.

// isMountHelperCall reports whether args are the mount(8) form: a
// directory (not a command name) and a mountpoint.
func isMountHelperCall(args []string) bool {
	if len(args) < 2 || strings.HasPrefix(args[0], "-") {
		return false
	}
	if strings.Contains(args[0], "/") {
		return true
	}
	st, err := os.Stat(args[0])
	return err == nil && st.IsDir()
}

// cmdMountHelper mounts CIPHERDIR MOUNTPOINT [-o OPTIONS]... in the
// background, as kmsfs mount -d.
func cmdMountHelper(args []string, stdout, stderr io.Writer) error {
	var opts []string
	rest := args[2:]
	for len(rest) > 0 {
		switch a := rest[0]; {
		case a == "-o" && len(rest) > 1:
			opts = append(opts, rest[1])
			rest = rest[2:]
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			opts = append(opts, a[2:])
			rest = rest[1:]
		default:
			return fail(exitUsage, "%q: as a mount helper kmsfs takes CIPHERDIR MOUNTPOINT -o OPTIONS only (or run kmsfs mount [flags] CIPHERDIR MOUNTPOINT)", a)
		}
	}
	flags, err := mountOptionFlags(strings.Join(opts, ","))
	if err != nil {
		return err
	}
	// Last, so no option turns it off: at boot nobody is there to check
	// a volume trusted on first sight.
	return cmdMount(append(append(flags, "--daemon", "--require-trusted", "--"), args[0], args[1]), stdout, stderr)
}

// ignoredMountOptions are for mount(8), systemd and fstab (noauto, nofail,
// _netdev, x-systemd.*), or are generic mount flags that kmsfs sets
// itself: a FUSE mount is always nosuid and nodev, and atime and sync
// are the backing filesystem's business (kmsfs writes through anyway).
var ignoredMountOptions = map[string]bool{
	"defaults": true, "rw": true, "auto": true, "noauto": true, "nofail": true, "_netdev": true,
	"user": true, "nouser": true, "users": true, "owner": true, "group": true,
	"suid": true, "nosuid": true, "dev": true, "nodev": true, "exec": true, "noexec": true,
	"atime": true, "noatime": true, "relatime": true, "norelatime": true, "strictatime": true,
	"nostrictatime": true, "diratime": true, "nodiratime": true, "lazytime": true, "nolazytime": true,
	"sync": true, "async": true, "dirsync": true, "silent": true, "loud": true,
	"default_permissions": true, // on unless default_permissions=false
}

// optionAliases are the options spelled as other FUSE filesystems and
// mount(8) spell them.
var optionAliases = map[string]string{"ro": "read_only"}

// mountOptionFlags turns a mount(8) option string (comma-separated,
// name or name=value) into kmsfs mount flags.
func mountOptionFlags(opts string) ([]string, error) {
	var m mountFlags
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	m.define(fl)
	var out []string
	for _, opt := range strings.Split(opts, ",") {
		name, value, hasValue := strings.Cut(opt, "=")
		if !strings.HasPrefix(name, "x-") {
			// One spelling, so that the refusals below see every form:
			// -o trust-config is trust_config.
			name = strings.ReplaceAll(name, "-", "_")
		}
		if alias, ok := optionAliases[name]; ok {
			name = alias
		}
		switch {
		case opt == "", ignoredMountOptions[name] && !hasValue,
			strings.HasPrefix(name, "x-"), name == "comment":
			continue
		case name == "trust_config":
			// At every boot it would trust whatever kmsfs.json
			// CIPHERDIR holds then: the check would never run.
			return nil, fail(exitUsage, "-o trust_config: accept a changed kmsfs.json once, by hand (kmsfs mount --trust-config CIPHERDIR MOUNTPOINT, then unmount), not in fstab")
		case name == "debug_fuse":
			// It would log file names and the first bytes of every read
			// and write, plaintext, at every boot.
			return nil, fail(exitUsage, "-o debug_fuse logs plaintext: use kmsfs mount --debug-fuse by hand while debugging, not in fstab")
		case name == "daemon" || name == "d":
			return nil, fail(exitUsage, "-o %s: unknown mount option (kmsfs options are the mount flags spelled with _: key_cache_ttl=30s)", opt)
		}
		f := fl.Lookup(strings.ReplaceAll(name, "_", "-"))
		if f == nil {
			return nil, fail(exitUsage, "-o %s: unknown mount option (kmsfs options are the mount flags spelled with _: key_cache_ttl=30s)", opt)
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue || value == "" {
			return nil, fail(exitUsage, "-o %s needs a value (%s=%s)", name, name, exampleValue(f))
		}
		if err := f.Value.Set(value); err != nil {
			return nil, fail(exitUsage, "-o %s: %q is not a valid %s", opt, value, strings.ToLower(exampleValue(f)))
		}
		out = append(out, "--"+f.Name+"="+value)
	}
	return out, nil
}

// exampleValue shows what an option's value looks like, for an error.
func exampleValue(f *flag.Flag) string {
	if name, _ := flag.UnquoteUsage(f); name != "" && name != "value" {
		return strings.ToUpper(name)
	}
	return f.DefValue
}
