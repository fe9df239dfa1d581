package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrInput marks what the user must fix: an unknown job or service, an unreachable login host,
// a busy local port. The command exits 2 on it.
var ErrInput = errors.New("tunnel")

// ServicesDir is where a service's connection file lives, under the home directory.
const ServicesDir = ".llm-agent/services"

// A job id or service name goes into a path on the login host and into its shell's command
// line: it must be a plain name.
var plainName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// connectionPath is the path of the connection file for a job (an id, a state directory or the
// file) or a service, relative to the home directory unless given absolute.
func connectionPath(job, service string) (string, error) {
	switch {
	case service != "" && job != "":
		return "", fmt.Errorf("%w: give a job or --service, not both", ErrInput)
	case service != "":
		if !plainName.MatchString(service) {
			return "", fmt.Errorf("%w: service name %q: use letters, digits, '.', '_' and '-'", ErrInput, service)
		}
		return path.Join(ServicesDir, service, jobfiles.ConnectionFile), nil
	case job == "":
		return "", fmt.Errorf("%w: give a job id (or --service NAME)", ErrInput)
	case strings.ContainsRune(job, '/'):
		if strings.HasSuffix(job, ".json") {
			return job, nil
		}
		return path.Join(job, jobfiles.ConnectionFile), nil
	case !plainName.MatchString(job):
		return "", fmt.Errorf("%w: job %q is neither a job id nor a path", ErrInput, job)
	}
	return path.Join(jobfiles.JobsDir, job, jobfiles.ConnectionFile), nil
}

// source reads files of the job: on the login host through ssh, or here.
type source interface {
	// read returns a file's content; a missing file wraps os.ErrNotExist, an unreachable host
	// errUnreachable.
	read(ctx context.Context, path string) ([]byte, error)
	// where names the place for messages, such as "alice@login".
	where() string
}

var errUnreachable = errors.New("cannot reach the login host")

// localSource reads this machine's files: the tunnel runs on the login host itself.
type localSource struct{ home string }

func (l localSource) read(_ context.Context, p string) ([]byte, error) {
	if !filepath.IsAbs(p) {
		p = filepath.Join(l.home, p)
	}
	return os.ReadFile(p)
}

func (localSource) where() string { return "this host" }

// sshSource reads files on the login host with the system's OpenSSH client.
type sshSource struct{ ssh *sshCommand }

// sshExitError is ssh's own failure (exit 255): the connection, not the remote command.
const sshExitError = 255

func (s sshSource) read(ctx context.Context, p string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := s.ssh.command(ctx, nil, "cat -- "+shellQuote(p))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	msg := lastLine(stderr.String())
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.As(err, &ee) && ee.ExitCode() == sshExitError:
		return nil, fmt.Errorf("%w %s: %s", errUnreachable, s.ssh.login, msg)
	case errors.As(err, &ee) && strings.Contains(msg, "No such file"):
		return nil, fmt.Errorf("%s on %s: %w", p, s.ssh.login, os.ErrNotExist)
	case errors.As(err, &ee):
		return nil, fmt.Errorf("read %s on %s: %s", p, s.ssh.login, msg)
	}
	return nil, fmt.Errorf("run %s: %w", s.ssh.program, err)
}

func (s sshSource) where() string { return s.ssh.login }

// shellQuote quotes s for a POSIX shell (the login shell that runs ssh's remote command).
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
