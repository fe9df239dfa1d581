//go:build makecheck

// Package makecheck proves that the Makefile's unit target fails when a unit test fails. It runs
// `make unit` in a temporary copy of the repository with one extra package whose coverage is
// full, so that only the test result, not the coverage gate, can fail the target. It has its own
// build tag because it runs make, which runs go test: `make check-make` runs it.
package makecheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const probeSource = `package zzprobe

// Double is covered in full by its test.
func Double(x int) int { return 2 * x }
`

const probeTest = `package zzprobe

import "testing"

func TestDouble(t *testing.T) {
	if got := Double(2); got != WANT {
		t.Fatalf("Double(2) = %d, want WANT", got)
	}
}
`

// copyRepo copies the files git tracks (and the working tree's versions of them) into dir.
func copyRepo(t *testing.T, root, dir string) {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	require.NoError(t, err, "list the repository's files")
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, rel)
		info, err := os.Lstat(src)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the working tree, or a link
		}
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		dst := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o755))
		require.NoError(t, os.WriteFile(dst, b, info.Mode().Perm()))
	}
}

// runUnit runs `make unit` on the probe package alone in a fresh copy whose probe test expects
// want, and returns make's exit code and output.
func runUnit(t *testing.T, want string) (int, string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	dir := t.TempDir()
	copyRepo(t, root, dir)
	pkg := filepath.Join(dir, "zzprobe")
	require.NoError(t, os.MkdirAll(pkg, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(pkg, "probe.go"), []byte(probeSource), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(pkg, "probe_test.go"),
		[]byte(strings.ReplaceAll(probeTest, "WANT", want)), 0o644))
	cmd := exec.Command("make", "--no-print-directory", "unit", "COVER_PKGS=./zzprobe/")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil {
		return 0, string(out)
	}
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "run make: %s", out)
	return exit.ExitCode(), string(out)
}

// TestUnitTargetFailsOnFailingTest: a failing test with full coverage fails `make unit`.
func TestUnitTargetFailsOnFailingTest(t *testing.T) {
	code, out := runUnit(t, "5")
	require.Contains(t, out, "--- FAIL: TestDouble", "the probe test did not run and fail:\n%s", out)
	require.Contains(t, out, "coverage: 100.0% of statements", "the coverage gate alone must pass:\n%s", out)
	require.NotZero(t, code, "make unit exited 0 although a unit test failed:\n%s", out)
}

// TestUnitTargetPassesOnPassingTest is the control: the same copy with a passing test succeeds,
// so the failure above comes from the test result, not from the set-up.
func TestUnitTargetPassesOnPassingTest(t *testing.T) {
	code, out := runUnit(t, "4")
	require.Zero(t, code, "make unit failed on a passing test:\n%s", out)
}
