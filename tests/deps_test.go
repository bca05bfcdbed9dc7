package tests

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The import direction of docs (DESIGN.md, STYLE.md): cmd/kmsfs → fs →
// volume, blockfile → blockcipher, keyring. blockcipher knows nothing of
// FUSE or KMS, keyring nothing of FUSE or files, volume nothing of FUSE,
// and only keyring/awskms speaks to the AWS SDK. internal/secret (the
// SHA-256, HMAC and HKDF whose buffers are cleared, shared by blockcipher
// and keyring) is standard library only, so blockcipher depending on it
// stays pure. These checks read `go list` and need no FUSE.

const module = "github.com/kmsfs/kmsfs"

// secretPkg is the one package of the module blockcipher may import.
const secretPkg = module + "/internal/secret"

// goList runs `go list args...` in the module root and returns its output
// lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// deps returns every package pkg depends on, transitively (its tests
// excluded), with whether it is in the standard library.
func deps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, line := range goList(t, "-deps", "-f", `{{.ImportPath}}{{"\t"}}{{.Standard}}`, pkg) {
		path, std, ok := strings.Cut(line, "\t")
		if !ok {
			t.Fatalf("go list line %q", line)
		}
		out[path] = std == "true"
	}
	if _, ok := out[pkg]; !ok {
		t.Fatalf("go list -deps %s does not list the package itself: is it still there?", pkg)
	}
	return out
}

// directImports are a package's own imports, and those of its tests.
type directImports struct {
	code, tests []string
}

// imports returns the direct imports of every package of the module.
func imports(t *testing.T) map[string]directImports {
	t.Helper()
	out := map[string]directImports{}
	f := `{{.ImportPath}}{{"\t"}}{{join .Imports " "}}{{"\t"}}{{join .TestImports " "}} {{join .XTestImports " "}}`
	for _, line := range goList(t, "-f", f, module+"/...") {
		parts := strings.Split(line, "\t")
		if len(parts) != 3 {
			t.Fatalf("go list line %q", line)
		}
		out[parts[0]] = directImports{code: strings.Fields(parts[1]), tests: strings.Fields(parts[2])}
	}
	for _, p := range []string{"internal/secret", "blockcipher", "blockfile", "volume", "keyring", "keyring/agekey", "keyring/awskms", "keyring/kmstest", "fs", "cmd/kmsfs"} {
		if _, ok := out[module+"/"+p]; !ok {
			t.Fatalf("package %s/%s is missing from go list: update this test", module, p)
		}
	}
	return out
}

func isAWSSDK(path string) bool {
	return strings.HasPrefix(path, "github.com/aws/")
}

func isGoFUSE(path string) bool {
	return strings.HasPrefix(path, "github.com/hanwen/go-fuse/")
}

func TestDeps(t *testing.T) {
	t.Parallel()
	t.Run("internal/secret imports only the standard library", func(t *testing.T) {
		for dep, std := range deps(t, secretPkg) {
			if !std && dep != secretPkg {
				t.Errorf("internal/secret depends on %s", dep)
			}
		}
	})

	t.Run("blockcipher imports only the standard library and internal/secret", func(t *testing.T) {
		pkg := module + "/blockcipher"
		for dep, std := range deps(t, pkg) {
			if !std && dep != pkg && dep != secretPkg {
				t.Errorf("blockcipher depends on %s", dep)
			}
		}
		std := map[string]bool{}
		for _, p := range goList(t, "std") {
			std[p] = true
		}
		for _, imp := range imports(t)[pkg].tests {
			if !std[imp] && imp != pkg && imp != secretPkg {
				t.Errorf("blockcipher's tests import %s", imp)
			}
		}
	})

	t.Run("blockfile imports only blockcipher and the standard library", func(t *testing.T) {
		pkg := module + "/blockfile"
		for dep, std := range deps(t, pkg) {
			if !std && dep != pkg && dep != module+"/blockcipher" && dep != secretPkg {
				t.Errorf("blockfile depends on %s", dep)
			}
		}
	})

	t.Run("keyring knows nothing of FUSE, files or blocks", func(t *testing.T) {
		for _, pkg := range []string{module + "/keyring", module + "/keyring/agekey", module + "/keyring/awskms", module + "/keyring/kmstest"} {
			for dep := range deps(t, pkg) {
				if isGoFUSE(dep) || dep == module+"/fs" || dep == module+"/volume" || dep == module+"/blockfile" ||
					dep == module+"/blockcipher" || strings.HasPrefix(dep, module+"/cmd/") {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
		// The keyring interface and its local providers need no SDK.
		for dep := range deps(t, module+"/keyring") {
			if isAWSSDK(dep) {
				t.Errorf("keyring depends on %s", dep)
			}
		}
	})

	t.Run("volume knows nothing of FUSE or KMS", func(t *testing.T) {
		for dep := range deps(t, module+"/volume") {
			if isGoFUSE(dep) || isAWSSDK(dep) || dep == module+"/fs" || strings.HasPrefix(dep, module+"/cmd/") {
				t.Errorf("volume depends on %s", dep)
			}
		}
	})

	t.Run("only keyring/awskms imports the AWS SDK", func(t *testing.T) {
		allowed := map[string]bool{
			module + "/keyring/awskms":  true,
			module + "/keyring/kmstest": true,
			module + "/cmd/kmsfs":       true, // the wiring may import anything
		}
		for pkg, imps := range imports(t) {
			if allowed[pkg] {
				continue
			}
			for _, imp := range imps.code {
				if isAWSSDK(imp) {
					t.Errorf("%s imports %s", pkg, imp)
				}
			}
			// The integration tests may check with the SDK, as any KMS
			// user would, that kmsfs's wrapped keys are plain KMS blobs.
			if pkg == module+"/tests" {
				continue
			}
			for _, imp := range imps.tests {
				if isAWSSDK(imp) {
					t.Errorf("tests of %s import %s", pkg, imp)
				}
			}
		}
	})

	// keyring and fs keep plain counters; cmd/kmsfs exports them
	// (metrics.go), so a metrics library stays out of the libraries.
	t.Run("only cmd/kmsfs imports Prometheus", func(t *testing.T) {
		for pkg, imps := range imports(t) {
			if pkg == module+"/cmd/kmsfs" {
				continue
			}
			for _, imp := range imps.code {
				if strings.HasPrefix(imp, "github.com/prometheus/") {
					t.Errorf("%s imports %s", pkg, imp)
				}
			}
		}
	})

	t.Run("fs does not reach the AWS SDK", func(t *testing.T) {
		pkg := module + "/fs"
		for dep := range deps(t, pkg) {
			if isAWSSDK(dep) || dep == module+"/keyring/awskms" {
				t.Errorf("fs depends on %s", dep)
			}
		}
	})

	t.Run("fs exports no volume config", func(t *testing.T) {
		out := goList(t, "-f", "{{.Dir}}", module+"/fs")
		cmd := exec.Command("go", "doc", "-short", out[0])
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("go doc: %v", err)
		}
		for _, name := range []string{"Config", "KeyringSpec", "ParseConfig", "ReadConfig", "WriteConfig"} {
			if strings.Contains(string(b), " "+name+" ") || strings.Contains(string(b), " "+name+"(") {
				t.Errorf("fs exports %s: the volume config belongs to package volume", name)
			}
		}
	})

	t.Run("no package imports cmd or tests", func(t *testing.T) {
		for pkg, imps := range imports(t) {
			for _, imp := range slices.Concat(imps.code, imps.tests) {
				if (strings.HasPrefix(imp, module+"/cmd/") || imp == module+"/tests") && imp != pkg {
					t.Errorf("%s imports %s", pkg, imp)
				}
			}
		}
	})
}
