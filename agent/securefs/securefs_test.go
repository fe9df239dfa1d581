package securefs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	require.NoError(t, os.WriteFile(good, []byte("s3cret\n"), 0o600))
	b, err := ReadSecret(good, 64)
	require.NoError(t, err)
	assert.Equal(t, "s3cret\n", string(b))

	open := filepath.Join(dir, "open")
	require.NoError(t, os.WriteFile(open, []byte("x"), 0o644))
	_, err = ReadSecret(open, 64)
	assert.ErrorIs(t, err, ErrUnsafe)
	assert.ErrorContains(t, err, "mode 0644")

	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(good, link))
	_, err = ReadSecret(link, 64)
	assert.ErrorIs(t, err, ErrUnsafe)
	assert.ErrorContains(t, err, "symbolic link")

	_, err = ReadSecret(good, 3)
	assert.ErrorIs(t, err, ErrUnsafe, "over the size limit")

	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err = ReadSecret(fifo, 64)
	assert.ErrorIs(t, err, ErrUnsafe, "a fifo would block the reader")

	_, err = ReadSecret(filepath.Join(dir, "missing"), 64)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestReadSecretChecksTheHandle: the mode is read from the file that was opened. A file that is
// swapped for an open one after the open is still the private one that was read.
func TestReadSecretChecksTheHandle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	require.NoError(t, os.WriteFile(path, []byte("private"), 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	// Replace the path with a world-readable file; the handle still points to the old one.
	require.NoError(t, os.Remove(path))
	require.NoError(t, os.WriteFile(path, []byte("public"), 0o644))
	fi, err := f.Stat()
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "fstat sees the opened file")
	_, err = ReadSecret(path, 64)
	assert.ErrorIs(t, err, ErrUnsafe, "the new file at the path is refused")
}

func TestOpenAppend(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	f, err := OpenAppend(path)
	require.NoError(t, err)
	f.WriteString("one\n")
	f.Close()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	target := filepath.Join(dir, "victim")
	require.NoError(t, os.WriteFile(target, nil, 0o600))
	link := filepath.Join(dir, "planted")
	require.NoError(t, os.Symlink(target, link))
	_, err = OpenAppend(link)
	assert.ErrorIs(t, err, ErrUnsafe)
	b, _ := os.ReadFile(target)
	assert.Empty(t, b, "nothing was written through the link")

	dangling := filepath.Join(dir, "dangling")
	require.NoError(t, os.Symlink(filepath.Join(dir, "would-be-created"), dangling))
	_, err = OpenAppend(dangling)
	assert.ErrorIs(t, err, ErrUnsafe)
	assert.NoFileExists(t, filepath.Join(dir, "would-be-created"))

	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err = OpenAppend(fifo)
	assert.Error(t, err)
}

func TestCheckDir(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	require.NoError(t, os.Mkdir(ok, 0o750))
	assert.NoError(t, CheckDir(ok))

	for _, mode := range []os.FileMode{0o770, 0o777, 0o702} {
		d := filepath.Join(dir, "w"+mode.String())
		require.NoError(t, os.Mkdir(d, 0o700))
		require.NoError(t, os.Chmod(d, mode))
		err := CheckDir(d)
		assert.ErrorIs(t, err, ErrUnsafe, "mode %04o", mode)
		assert.ErrorContains(t, err, "chmod go-w")
	}
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(ok, link))
	assert.ErrorIs(t, CheckDir(link), ErrUnsafe)

	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	assert.ErrorIs(t, CheckDir(file), ErrUnsafe)

	if os.Geteuid() == 0 {
		// Root can give a directory away and see it refused.
		other := filepath.Join(dir, "other")
		require.NoError(t, os.Mkdir(other, 0o700))
		require.NoError(t, os.Chown(other, 65534, 65534))
		err := CheckDir(other)
		assert.ErrorIs(t, err, ErrUnsafe)
		assert.ErrorContains(t, err, "uid 65534")
		// A file planted by another user is neither read as a secret nor appended to.
		planted := filepath.Join(dir, "planted")
		require.NoError(t, os.WriteFile(planted, []byte("theirs"), 0o600))
		require.NoError(t, os.Chown(planted, 65534, 65534))
		_, err = ReadSecret(planted, 64)
		assert.ErrorIs(t, err, ErrUnsafe)
		_, err = OpenAppend(planted)
		assert.ErrorIs(t, err, ErrUnsafe)
	}

	made := filepath.Join(dir, "made")
	require.NoError(t, EnsureDir(made))
	fi, err := os.Stat(made)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	assert.NoError(t, EnsureDir(made), "an existing good directory is kept")
	assert.ErrorIs(t, EnsureDir(filepath.Join(dir, "missing", "x")), os.ErrNotExist)
	assert.ErrorIs(t, CheckDir(filepath.Join(dir, "missing")), os.ErrNotExist)
}

func TestPrivateTemp(t *testing.T) {
	parent := t.TempDir()
	// A squatter's directory under the old predictable name changes nothing.
	require.NoError(t, os.Mkdir(filepath.Join(parent, "llm-agent-42"), 0o777))
	a, err := PrivateTemp(parent, "llm-agent-42-")
	require.NoError(t, err)
	b, err := PrivateTemp(parent, "llm-agent-42-")
	require.NoError(t, err)
	assert.NotEqual(t, a, b)
	fi, err := os.Stat(a)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	_, err = PrivateTemp(filepath.Join(parent, "missing"), "x-")
	assert.Error(t, err)
}
