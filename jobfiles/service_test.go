package jobfiles

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckServiceName(t *testing.T) {
	for _, ok := range []string{"chat", "llama-8b.eval_2", "0"} {
		assert.NoError(t, CheckServiceName(ok), ok)
	}
	for _, bad := range []string{"", "../x", "a/b", "-x", ".hidden", "a b", string(make([]byte, 65))} {
		assert.ErrorIs(t, CheckServiceName(bad), ErrService, bad)
	}
}

// TestUpdateService: the folders are made private, the file is 0600, and updates under the
// lock do not lose one another.
func TestUpdateService(t *testing.T) {
	home := t.TempDir()
	dir := ServiceDir(home, "svc")
	_, err := ReadService(dir)
	require.ErrorIs(t, err, os.ErrNotExist)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := UpdateService(dir, func(s *ServiceFile) error {
				s.Service.Name = "svc"
				s.Service.Jobs = append(s.Service.Jobs, ServiceJob{JobID: string(rune('a' + i))})
				return nil
			})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	s, err := ReadService(dir)
	require.NoError(t, err)
	assert.Len(t, s.Service.Jobs, 20, "no update lost")
	assert.NotNil(t, s.Service.Job("a"))
	assert.Nil(t, s.Service.Job("zz"))
	for _, p := range []string{filepath.Join(home, ".llm-agent"), filepath.Join(home, ServicesDir), dir} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), p)
	}
	fi, err := os.Stat(filepath.Join(dir, ConnectionFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A failed change writes nothing.
	_, err = UpdateService(dir, func(s *ServiceFile) error {
		s.Service.Jobs = nil
		return errors.New("no")
	})
	require.Error(t, err)
	s, _ = ReadService(dir)
	assert.Len(t, s.Service.Jobs, 20)

	// A folder others may write to is refused.
	require.NoError(t, os.Chmod(dir, 0o777))
	_, err = UpdateService(dir, func(*ServiceFile) error { return nil })
	assert.ErrorIs(t, err, ErrService)
	require.NoError(t, os.Chmod(dir, 0o700))

	// The lock is never taken through a link.
	require.NoError(t, os.Remove(filepath.Join(dir, ".lock")))
	require.NoError(t, os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), filepath.Join(dir, ".lock")))
	_, err = UpdateService(dir, func(*ServiceFile) error { return nil })
	assert.Error(t, err)
}

func TestConnectionWriterWatch(t *testing.T) {
	dir := t.TempDir()
	w, err := NewConnectionWriter(dir, Connection{JobID: "1", State: StateStarting}, "")
	require.NoError(t, err)
	var seen []ServiceState
	w.Watch(func(c Connection) { seen = append(seen, c.State) })
	require.NoError(t, w.SetState(StateReady, ""))
	require.NoError(t, w.SetState(StateReady, "")) // no change, no write
	require.NoError(t, w.SetState(StateStopped, ""))
	assert.Equal(t, []ServiceState{StateStarting, StateReady, StateStopped}, seen)
}
