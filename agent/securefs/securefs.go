// Package securefs opens the job's files so that another user of the cluster can neither read
// its secrets nor redirect its writes: secret files are opened once and checked on the open
// handle, appends never follow a symbolic link, and directories the agent reuses must belong to
// its user and be closed to others. It knows nothing of what the files hold.
package securefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe is wrapped by every refusal: a file or directory that another user could read,
// write, replace or redirect.
var ErrUnsafe = errors.New("unsafe file")

// checkOwned refuses a file that is not this process's user's.
func checkOwned(path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Geteuid() {
		uid := -1
		if ok {
			uid = int(st.Uid)
		}
		return fmt.Errorf("%w: %s belongs to uid %d, not to this user (uid %d)", ErrUnsafe, path, uid, os.Geteuid())
	}
	return nil
}

// ReadSecret reads a secret file of at most limit bytes. It opens the path once without
// following a symbolic link and checks the open handle: a regular file owned by this user that
// group and others can neither read nor write. A separate stat of the path would leave a window
// in which the file could be swapped.
func ReadSecret(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symbolic link; give the file itself", ErrUnsafe, path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrUnsafe, path)
	}
	if err := checkOwned(path, fi); err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; other users could read it: chmod 600 %s", ErrUnsafe, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrUnsafe, path, limit)
	}
	return b, nil
}

// OpenAppend opens path for appending, creating it with mode 0600. It never follows a symbolic
// link and refuses a file that is not a regular file of this user's, so that a link or a file
// planted by someone else cannot redirect what the agent writes.
func OpenAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symbolic link", ErrUnsafe, path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is not a regular file", ErrUnsafe, path)
	}
	if err == nil {
		err = checkOwned(path, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckDir refuses a directory that is a symbolic link, is not this user's, or that group or
// others may write to (they could plant or replace files in it).
func CheckDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symbolic link; give the directory itself", ErrUnsafe, path)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafe, path)
	}
	if err := checkOwned(path, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; other users could write to it: chmod go-w %s", ErrUnsafe, path, perm, path)
	}
	return nil
}

// EnsureDir creates path with mode 0700 if it is missing, then checks it with CheckDir.
func EnsureDir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return CheckDir(path)
}

// PrivateTemp creates a fresh directory of mode 0700 under parent, with a random suffix after
// prefix. A directory someone else made under a predictable name cannot be taken over, since
// the name is new; the result is checked all the same.
func PrivateTemp(parent, prefix string) (string, error) {
	dir, err := os.MkdirTemp(parent, prefix+"*") // mode 0700
	if err != nil {
		return "", err
	}
	if err := CheckDir(dir); err != nil {
		os.Remove(dir)
		return "", err
	}
	return filepath.Clean(dir), nil
}
