package main

import (
	"slices"
	"strings"
	"testing"
)

// TestMountOptionFlags: every mount flag is an option spelled with _, ro
// is read_only, mount(8)'s and systemd's options are dropped, and the
// rest is refused.
func TestMountOptionFlags(t *testing.T) {
	for _, c := range []struct {
		opts string
		want []string // flags; nil with err
		err  string
	}{
		{"", nil, ""},
		{"allow_other,ro,key_cache_ttl=30s", []string{"--allow-other=true", "--read-only=true", "--key-cache-ttl=30s"}, ""},
		{"read_only,nonempty,idle=10m,release_memory_after=1m,log_level=warn,log_file=/var/log/kmsfs.log", []string{"--read-only=true", "--nonempty=true", "--idle=10m", "--release-memory-after=1m", "--log-level=warn", "--log-file=/var/log/kmsfs.log"}, ""},
		{"kms_endpoint=https://kms.example:443/a=b,region=eu-west-2,local_key=/etc/k", []string{"--kms-endpoint=https://kms.example:443/a=b", "--region=eu-west-2", "--local-key=/etc/k"}, ""},
		{"region=alias/a=eu-west-1,region=alias/b=us-east-1", []string{"--region=alias/a=eu-west-1", "--region=alias/b=us-east-1"}, ""},
		{"metrics_addr=127.0.0.1:9310,branch_key_ttl=5m,key_pool=8,key_readahead=false,prefetch_keys", []string{"--metrics-addr=127.0.0.1:9310", "--branch-key-ttl=5m", "--key-pool=8", "--key-readahead=false", "--prefetch-keys=true"}, ""},
		{"defaults,rw,nofail,noauto,auto,_netdev,user,nosuid,nodev,noexec,exec,suid,dev,noatime,relatime,sync,async,x-systemd.automount,x-systemd.requires=a.service,x-gvfs-show,comment=systemd.automount", []string{}, ""},
		{"default_permissions=false", []string{"--default-permissions=false"}, ""},
		{"allow-other", []string{"--allow-other=true"}, ""},
		{"bogus", nil, "-o bogus: unknown mount option"},
		{"key_pool", nil, "-o key_pool needs a value (key_pool=INT)"},
		{"key_pool=many", nil, `-o key_pool=many: "many" is not a valid int`},
		{"trust_config", nil, "-o trust_config: accept a changed kmsfs.json once"},
		{"rw,trust-config", nil, "-o trust_config: accept a changed kmsfs.json once"},
		{"debug_fuse", nil, "-o debug_fuse logs plaintext"},
		{"debug-fuse=true", nil, "-o debug_fuse logs plaintext"},
		{"d", nil, "-o d: unknown mount option"},
		{"noexec=1", nil, "-o noexec=1: unknown mount option"},
	} {
		got, err := mountOptionFlags(c.opts)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("-o %s: error %v, want one containing %q", c.opts, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("-o %s: %v", c.opts, err)
		case c.err == "" && !slices.Equal(got, c.want) && (len(got) != 0 || len(c.want) != 0):
			t.Errorf("-o %s: flags %q, want %q", c.opts, got, c.want)
		}
	}
}

func TestIsMountHelperCall(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{dir, "/mnt", "-o", "ro"}, true},
		{[]string{"./relative/cipher", "/mnt"}, true},
		{[]string{"mount", "/a"}, false}, // no such directory in the working directory
		{[]string{"--help", "/a"}, false},
		{[]string{dir}, false},
	} {
		if got := isMountHelperCall(c.args); got != c.want {
			t.Errorf("isMountHelperCall(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
