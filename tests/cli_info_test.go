package tests

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// kmsfs info and kmsfs version as a user runs them.

// infoJSON is what `kmsfs info` prints (README, "kmsfs info"), decoded
// with unknown fields refused.
type infoJSON struct {
	CipherDir         string          `json:"cipherdir"`
	VolumeID          string          `json:"volume_id"`
	FormatVersion     int             `json:"format_version"`
	BlockSize         int             `json:"block_size"`
	HeaderSize        int             `json:"header_size"`
	KeyMode           string          `json:"key_mode"`
	BranchKeyRotation string          `json:"branch_key_rotation"`
	BranchKeys        *int            `json:"branch_keys"`
	Keyrings          []cliKeyringCfg `json:"keyrings"`
	TrustedCopy       string          `json:"trusted_copy"`
}

func readInfo(t *testing.T, v *volume, info *infoJSON, env ...string) {
	t.Helper()
	out, errOut, code := run(t, append(v.Env, env...), "info", v.Dir)
	if code != 0 || errOut != "" {
		t.Fatalf("info: exit %d\nstderr: %s", code, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(info); err != nil {
		t.Fatalf("info: %v\n%s", err, out)
	}
}

// TestInfo: info prints the config's settings and this machine's trust
// in it, with no key service call.
func TestInfo(t *testing.T) {
	t.Parallel()
	env := newBranchEnv(t, "--kms-key", kmstest.KeyBARN)
	env.proxy.Reset()
	var info infoJSON
	readInfo(t, env.vol, &info)
	c := cliReadConfig(t, env.vol.Dir)
	if info.CipherDir != env.vol.Dir || info.VolumeID != c.VolumeID || info.FormatVersion != 3 || info.BlockSize != c.BlockSize ||
		info.HeaderSize != c.HeaderSize || info.KeyMode != "branch" || info.BranchKeyRotation != "24h0m0s" ||
		info.BranchKeys == nil || *info.BranchKeys != 1 || info.TrustedCopy != "trusted" {
		t.Errorf("info of a branch-key volume: %+v", info)
	}
	if len(info.Keyrings) != 2 || info.Keyrings[0].KeyARN != kmstest.KeyAARN || info.Keyrings[1].KeyARN != kmstest.KeyBARN || info.Keyrings[0].Endpoint != env.proxy.Endpoint() {
		t.Errorf("keyrings %+v, want keys A and B with their ARNs and endpoint", info.Keyrings)
	}
	if n := env.proxy.Total(); n != 0 {
		t.Errorf("info made %d KMS requests", n)
	}
	readInfo(t, env.vol, &info, "XDG_CONFIG_HOME="+t.TempDir())
	if info.TrustedCopy != "none" {
		t.Errorf("info on a machine without a copy: trusted_copy %q", info.TrustedCopy)
	}

	v := newVolume(t, nil)
	info = infoJSON{}
	readInfo(t, v, &info)
	if info.KeyMode != "per-file" || info.FormatVersion != 3 || info.BranchKeys != nil || info.BranchKeyRotation != "" || len(info.Keyrings) != 1 || info.Keyrings[0].Kind != "local" || info.Keyrings[0].KeyFile == "" {
		t.Errorf("info of a local-key volume: %+v", info)
	}
	out, errOut, code := run(t, nil, "info", t.TempDir())
	cliWantFail(t, "info of a directory that is no volume", out, errOut, code, cliExitVolume, "not a kmsfs volume")
}

// TestVersion: one line, the module version and VCS revision or "dev".
func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, errOut, code := run(t, nil, args...)
		if code != 0 || errOut != "" || !regexp.MustCompile(`^kmsfs \S+ \(revision ([0-9a-f]{40}(-modified)?|dev), go[0-9.]+\S*\)\n$`).MatchString(out) {
			t.Errorf("kmsfs %v: exit %d, %q, stderr %q", args, code, out, errOut)
		}
	}
	out, errOut, code := run(t, nil, "version", "extra")
	cliWantFail(t, "version with an argument", out, errOut, code, cliExitUsage)
}
