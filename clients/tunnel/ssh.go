package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
)

// sshCommand builds the system ssh client's command lines to the login host. Every run shares
// one control connection (the forward's), so reading a file costs a channel, not a login.
type sshCommand struct {
	program string   // the ssh client
	login   string   // [user@]host
	options []string // the user's -o options
	control string   // ControlPath of the forward's master connection
}

// base is what every ssh run gets: no prompts (a tunnel runs unattended), a bounded connect.
func (s *sshCommand) base() []string {
	args := []string{"-o", "BatchMode=yes", "-o", "ConnectTimeout=10"}
	for _, o := range s.options {
		args = append(args, "-o", o)
	}
	return args
}

// command runs remote on the login host, through the master connection when it is up and on a
// connection of its own when it is not.
func (s *sshCommand) command(ctx context.Context, extra []string, remote string) *exec.Cmd {
	args := append([]string{"-o", "ControlMaster=no", "-o", "ControlPath=" + s.control}, extra...)
	args = append(append(args, s.base()...), "--", s.login, remote)
	cmd := exec.CommandContext(ctx, s.program, args...)
	cmd.SysProcAttr = childAttr()
	return cmd
}

// forward is one ssh process that holds the master connection and forwards a Unix socket in
// the tunnel's private directory to the head's API port; the tunnel's own listener dials it.
type forward struct {
	cmd    *exec.Cmd
	socket string
	target string
	done   chan struct{} // closed when ssh has exited
	stderr bytes.Buffer
	mu     sync.Mutex
	err    error
	n      int // forwards made through the master after the first
}

// startForward starts ssh -N with the forward to target (host:port, as the login host
// resolves it).
func (s *sshCommand) startForward(ctx context.Context, dir, target string) (*forward, error) {
	f := &forward{socket: filepath.Join(dir, "api.sock"), target: target, done: make(chan struct{})}
	args := []string{
		"-N",
		"-o", "ControlMaster=yes", "-o", "ControlPath=" + s.control,
		"-o", "ExitOnForwardFailure=yes",
		"-o", "StreamLocalBindUnlink=yes",
		"-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
		"-L", f.socket + ":" + target,
	}
	args = append(append(args, s.base()...), "--", s.login)
	f.cmd = exec.CommandContext(ctx, s.program, args...)
	f.cmd.SysProcAttr = childAttr()
	f.cmd.Stderr = &lockedWriter{mu: &f.mu, w: &f.stderr}
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.program, err)
	}
	go func() {
		err := f.cmd.Wait()
		f.mu.Lock()
		f.err = err
		f.mu.Unlock()
		close(f.done)
	}()
	return f, nil
}

// dial connects to the head's API port through the forward.
func (f *forward) dial() (net.Conn, error) {
	f.mu.Lock()
	socket := f.socket
	f.mu.Unlock()
	return net.Dial("unix", socket)
}

// retarget points the forward at a new target through its master connection, with no new
// login: new connections go there, while those open go on through the old one to their end.
// A second socket carries the new forward; the old one's listener is cancelled after.
func (s *sshCommand) retarget(ctx context.Context, f *forward, target string) error {
	f.mu.Lock()
	old, oldTarget := f.socket, f.target
	f.n++
	socket := filepath.Join(filepath.Dir(old), "api-"+strconv.Itoa(f.n)+".sock")
	f.mu.Unlock()
	if err := s.controlOp(ctx, "forward", socket+":"+target); err != nil {
		return err
	}
	f.mu.Lock()
	f.socket, f.target = socket, target
	f.mu.Unlock()
	if err := s.controlOp(ctx, "cancel", old+":"+oldTarget); err == nil {
		os.Remove(old)
	}
	return nil
}

// controlOp asks the master connection to add or cancel a local forward (ssh -O).
func (s *sshCommand) controlOp(ctx context.Context, op, spec string) error {
	args := append([]string{"-o", "ControlPath=" + s.control, "-O", op, "-L", spec}, s.base()...)
	cmd := exec.CommandContext(ctx, s.program, append(args, "--", s.login)...)
	cmd.SysProcAttr = childAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ssh -O %s: %v: %s", op, err, lastLine(string(out)))
	}
	return nil
}

// stop ends ssh and waits for it.
func (f *forward) stop() {
	if f.cmd.Process != nil {
		f.cmd.Process.Kill()
	}
	<-f.done
}

// exitReason says why ssh ended, with its last line of error output.
func (f *forward) exitReason() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	reason := "ssh ended"
	if f.err != nil {
		reason = "ssh: " + f.err.Error()
		if ee, ok := f.err.(*exec.ExitError); ok && ee.ExitCode() >= 0 {
			reason = "ssh exited " + strconv.Itoa(ee.ExitCode())
		}
	}
	if msg := lastLine(f.stderr.String()); msg != "" {
		reason += ": " + msg
	}
	return reason
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 8<<10 { // only the last lines are ever shown
		tail := append([]byte(nil), l.w.Bytes()[l.w.Len()-4<<10:]...)
		l.w.Reset()
		l.w.Write(tail)
	}
	return l.w.Write(p)
}
