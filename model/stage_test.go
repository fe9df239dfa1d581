package model

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStageHFCache copies a cache snapshot to a plain directory, verifying in the same pass;
// the copy is reused while it holds, and made again when it was changed.
func TestStageHFCache(t *testing.T) {
	files, large := tinyModel()
	snap := hfCache(t, files, large)
	root, err := StageRoot(t.TempDir())
	require.NoError(t, err)
	dst := StagePath(root, snap)
	assert.Equal(t, "org--tiny-", filepath.Base(dst)[:len("org--tiny-")])
	var progress atomic.Int64
	st, err := Stage(context.Background(), snap, dst, StageOptions{Verify: true, Workers: 2, Progress: &progress})
	require.NoError(t, err)
	assert.False(t, st.Reused)
	assert.Equal(t, st.Total, progress.Load())
	assert.Equal(t, st.Total, st.Hashed)
	for name, content := range files {
		b, err := os.ReadFile(filepath.Join(dst, name))
		require.NoError(t, err)
		assert.Equal(t, content, b, name)
		fi, err := os.Lstat(filepath.Join(dst, name))
		require.NoError(t, err)
		assert.True(t, fi.Mode().IsRegular(), "%s is a file, not a link", name)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	}
	entries, _ := filepath.Glob(filepath.Join(root, "*.partial-*"))
	assert.Empty(t, entries)

	_, err = st.Release(false)
	require.NoError(t, err)
	st, err = Stage(context.Background(), snap, dst, StageOptions{Verify: true})
	require.NoError(t, err)
	assert.True(t, st.Reused)
	assert.Zero(t, st.Hashed)
	_, err = st.Release(false)
	require.NoError(t, err)

	// The copy changed on disk: it is made again.
	require.NoError(t, os.WriteFile(filepath.Join(dst, "config.json"), []byte(`{"model_type":"evil"}`), 0o600))
	st, err = Stage(context.Background(), snap, dst, StageOptions{Verify: true})
	require.NoError(t, err)
	assert.False(t, st.Reused)
	b, _ := os.ReadFile(filepath.Join(dst, "config.json"))
	assert.Equal(t, files["config.json"], b)
}

// TestStageManifestMismatch: a plain directory with SHA256SUMS stages with its manifest, which
// sha256sum -c accepts; a flipped byte fails the staging, naming the file, and leaves nothing.
func TestStageManifestMismatch(t *testing.T) {
	src := t.TempDir()
	files, _ := tinyModel()
	for name, b := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(src, name), b, 0o644))
	}
	_, err := WriteManifest(context.Background(), src, 2)
	require.NoError(t, err)
	root, err := StageRoot(t.TempDir())
	require.NoError(t, err)
	dst := StagePath(root, src)
	st, err := Stage(context.Background(), src, dst, StageOptions{Verify: true})
	require.NoError(t, err)
	_, err = st.Release(false)
	require.NoError(t, err)
	cmd := exec.Command("sha256sum", "-c", "--quiet", ManifestName)
	cmd.Dir = dst
	out, err := cmd.CombinedOutput()
	assert.NoError(t, err, string(out))

	require.NoError(t, os.RemoveAll(dst))
	flipByte(t, filepath.Join(src, "model-00001-of-00001.safetensors"), 5)
	_, err = Stage(context.Background(), src, dst, StageOptions{Verify: true})
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "model-00001-of-00001.safetensors (sha256 ")
	left, _ := filepath.Glob(filepath.Join(root, "*"))
	assert.Equal(t, []string{dst + ".lock"}, left, "a failed staging leaves nothing but its lock")
}

// TestStageTakesTurns: two stagers of one model into one place (two jobs on a node, or nodes
// sharing the stage directory) take turns: one copies, the other reuses the copy. The copy goes
// with the last of them.
func TestStageTakesTurns(t *testing.T) {
	files, large := tinyModel()
	snap := hfCache(t, files, large)
	root, err := StageRoot(t.TempDir())
	require.NoError(t, err)
	dst := StagePath(root, snap)
	results := make(chan Staged, 2)
	for range 2 {
		go func() {
			st, err := Stage(context.Background(), snap, dst, StageOptions{Verify: true})
			assert.NoError(t, err)
			results <- st
		}()
	}
	a, b := <-results, <-results
	assert.NotEqual(t, a.Reused, b.Reused, "one copied, the other reused")
	removed, err := a.Release(true)
	require.NoError(t, err)
	assert.False(t, removed, "the other still uses it")
	assert.DirExists(t, dst)
	removed, err = b.Release(true)
	require.NoError(t, err)
	assert.True(t, removed)
	assert.NoDirExists(t, dst)
	assert.NoFileExists(t, dst+".lock")
}

// TestStageRefusals: a stage directory that is not there, or whose user directory another user
// could write to, is refused; a disk without room is named with its numbers.
func TestStageRefusals(t *testing.T) {
	_, err := StageRoot(filepath.Join(t.TempDir(), "nope"))
	assert.ErrorIs(t, err, ErrStage)
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "llm-agent-"+itoa(os.Getuid())), 0o777))
	require.NoError(t, os.Chmod(filepath.Join(dir, "llm-agent-"+itoa(os.Getuid())), 0o777))
	_, err = StageRoot(dir)
	assert.ErrorIs(t, err, ErrStage)
	assert.ErrorContains(t, err, "other users could write to it")

	err = checkSpace(t.TempDir(), 1<<62)
	assert.ErrorIs(t, err, ErrStage)
	assert.Regexp(t, `has \d+ MiB free and the model needs 4398046511104 MiB`, err.Error())
}

func itoa(n int) string { return fmt.Sprint(n) }

// TestStagePlainDirectory: without verification every regular file is copied (hidden ones such
// as a download tool's .cache left out), and a source file that changed makes the copy again.
func TestStagePlainDirectory(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "config.json"), []byte(`{}`), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(src, "sub", ".cache"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "sub", "weights.bin"), []byte("weights"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "sub", ".cache", "lock"), []byte("x"), 0o644))
	require.NoError(t, os.Symlink("/nonexistent", filepath.Join(src, "dangling")))
	root, err := StageRoot(t.TempDir())
	require.NoError(t, err)
	dst := StagePath(root, src)
	st, err := Stage(context.Background(), src, dst, StageOptions{})
	require.NoError(t, err)
	assert.Len(t, st.Files, 2)
	assert.FileExists(t, filepath.Join(dst, "sub", "weights.bin"))
	assert.NoDirExists(t, filepath.Join(dst, "sub", ".cache"))
	_, err = st.Release(false)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(filepath.Join(src, "sub", "weights.bin"), []byte("new weights"), 0o644))
	st, err = Stage(context.Background(), src, dst, StageOptions{})
	require.NoError(t, err)
	assert.False(t, st.Reused, "the source changed")
	b, _ := os.ReadFile(filepath.Join(dst, "sub", "weights.bin"))
	assert.Equal(t, "new weights", string(b))
	_, err = st.Release(true)
	require.NoError(t, err)

	_, err = Stage(context.Background(), t.TempDir(), dst, StageOptions{})
	assert.ErrorIs(t, err, ErrNoSource)
}

// TestStageCancelled: a staging stopped half way leaves nothing but its lock.
func TestStageCancelled(t *testing.T) {
	files, large := tinyModel()
	snap := hfCache(t, files, large)
	root, err := StageRoot(t.TempDir())
	require.NoError(t, err)
	dst := StagePath(root, snap)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Stage(ctx, snap, dst, StageOptions{Verify: true})
	assert.ErrorIs(t, err, context.Canceled)
	left, _ := filepath.Glob(filepath.Join(root, "*"))
	assert.Equal(t, []string{dst + ".lock"}, left)
}

// TestStageErrNamesAFullDisk: a write that finds the disk full, or over quota, is a staging
// failure that says so; a read error of the source stays what it is.
func TestStageErrNamesAFullDisk(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		err := stageErr(&os.PathError{Op: "write", Path: "/scratch/x", Err: errno})
		assert.ErrorIs(t, err, ErrStage)
		assert.ErrorContains(t, err, "the stage directory is full")
	}
	err := stageErr(&os.PathError{Op: "open", Path: "/scratch/x", Err: syscall.EACCES})
	assert.ErrorIs(t, err, ErrStage)
	err = stageErr(&os.PathError{Op: "read", Path: "/models/x", Err: syscall.EIO})
	assert.NotErrorIs(t, err, ErrStage)
}
