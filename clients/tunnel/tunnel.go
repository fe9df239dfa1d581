// Package tunnel forwards a job's API port to a stable local port, from a laptop through the
// login host with the system's OpenSSH client, or from the login host itself; it follows the
// job's connection file and the endpoint's /readyz, and re-forwards when ssh drops or the job's
// head or port changes.
package tunnel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/llm-agent/llm-agent/agent/securefs"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrJobFailed is returned when the job ends in the failed state.
var ErrJobFailed = errors.New("the job failed")

// Options configure a tunnel.
type Options struct {
	// Job is a job id, or the path of its state directory or connection file; Service names a
	// service instead.
	Job, Service string
	// Login is the login host ([user@]host) to go through; empty when the tunnel runs there.
	Login string
	// SSH is the OpenSSH client program; SSHOptions are passed to it as -o options.
	SSH        string
	SSHOptions []string
	// LocalPort is the port on 127.0.0.1; 0 takes the job's own port number.
	LocalPort int
	// FetchKey copies the API key to KeyFile (mode 0600).
	FetchKey bool
	KeyFile  string
	// Interval is the time between /readyz probes.
	Interval time.Duration
	// Home is the local home directory (for relative paths in local mode).
	Home string
	// Out gets the lines to paste and the status; Terminal redraws one status line in place.
	Out      io.Writer
	Terminal bool
	// WakeTimeout bounds how long a client's connection to a sleeping service is held while
	// the tunnel wakes it; 0 answers such a connection 503 at once. Agent is the llm-agent that
	// wakes it, on the login host (default "llm-agent") or here (default: this program).
	WakeTimeout time.Duration
	Agent       string
}

// Tunnel is one running tunnel.
type Tunnel struct {
	o      Options
	src    source
	ssh    *sshCommand // nil in local mode
	path   string      // the connection file, as the source reads it
	dir    string      // private directory for the forward's sockets
	client *http.Client

	mu     sync.Mutex
	target string   // host:port of the API, as the login host reaches it
	fwd    *forward // nil when down or in local mode

	// outMu orders the status lines: the monitor and a wake both write them.
	outMu sync.Mutex
	state string // what the status line last said (under outMu)

	last    jobfiles.Connection // the connection file as last read
	sleep   string              // the service's state while it sleeps or wakes
	waking  chan struct{}       // closed when the wake under way ends; nil when none is
	wakeErr error               // what the last wake ended with
}

// Run opens the tunnel and keeps it until ctx ends (nil) or the job ends (nil when it stopped,
// ErrJobFailed when it failed). Errors before the tunnel is up wrap ErrInput when the user must
// fix something.
func Run(ctx context.Context, o Options) error {
	if o.Interval <= 0 {
		o.Interval = 3 * time.Second
	}
	if o.SSH == "" {
		o.SSH = "ssh"
	}
	if o.Agent == "" {
		o.Agent = "llm-agent" // on the login host
		if o.Login == "" {
			o.Agent = defaultAgent()
		}
	}
	if o.LocalPort < 0 || o.LocalPort > 65535 {
		return fmt.Errorf("%w: --local-port %d is not a port", ErrInput, o.LocalPort)
	}
	p, err := connectionPath(o.Job, o.Service)
	if err != nil {
		return err
	}
	t := &Tunnel{o: o, path: p}
	dir, err := securefs.PrivateTemp(os.TempDir(), "llm-agent-tunnel-")
	if err != nil {
		return fmt.Errorf("tunnel directory: %w", err)
	}
	defer os.RemoveAll(dir)
	t.dir = dir
	if o.Login != "" {
		if _, err := exec.LookPath(o.SSH); err != nil {
			return fmt.Errorf("%w: the OpenSSH client %q is not installed: %v", ErrInput, o.SSH, err)
		}
		t.ssh = &sshCommand{program: o.SSH, login: o.Login, options: o.SSHOptions, control: filepath.Join(dir, "control")}
		t.src = sshSource{ssh: t.ssh}
	} else {
		t.src = localSource{home: o.Home}
	}
	return t.run(ctx)
}

func (t *Tunnel) run(ctx context.Context) error {
	conn, err := t.readConnection(ctx)
	if err != nil {
		return err
	}
	if conn.State.Ended() && t.asleep() == "" {
		return fmt.Errorf("%w: %s has already ended (%s)", ErrInput, t.name(conn), describe(conn))
	}
	port := t.o.LocalPort
	if port == 0 {
		port = conn.Port
	}
	// The tunnel holds its local port for its whole life, through every reconnection: nobody
	// else on this host can take it over in between and collect the requests and their key.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("%w: cannot listen on 127.0.0.1:%d (%v); choose another with --local-port", ErrInput, port, err)
	}
	defer ln.Close()
	local := ln.Addr().String()
	t.client = &http.Client{Timeout: min(t.o.Interval, 5*time.Second), Transport: &http.Transport{DisableKeepAlives: true}}
	keyLine, err := t.keyLine(ctx, conn)
	if err != nil {
		return err
	}
	fmt.Fprintf(t.o.Out, "llm-agent tunnel: %s (model %s) on %s via %s\n", t.name(conn), conn.ServedModelName, target(conn), t.src.where())
	fmt.Fprintf(t.o.Out, "  export OPENAI_BASE_URL=http://%s/v1\n", local)
	fmt.Fprintf(t.o.Out, "  %s\n", keyLine)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.serve(ctx, ln)
	}()
	defer t.stopForward()
	return t.monitor(ctx, conn, "http://"+local+"/readyz")
}

// name is "job 123" or "service NAME".
func (t *Tunnel) name(c jobfiles.Connection) string {
	if t.o.Service != "" {
		return fmt.Sprintf("service %s (job %s)", t.o.Service, c.JobID)
	}
	return "job " + c.JobID
}

func target(c jobfiles.Connection) string {
	host := c.HeadAddress
	if host == "" {
		host = c.HeadHost
	}
	return net.JoinHostPort(host, strconv.Itoa(c.Port))
}

func describe(c jobfiles.Connection) string {
	if c.Reason != "" {
		return string(c.State) + ": " + c.Reason
	}
	return string(c.State)
}

// readConnection reads and parses the connection file; the first read's errors are the user's
// to fix.
func (t *Tunnel) readConnection(ctx context.Context) (jobfiles.Connection, error) {
	var c jobfiles.Connection
	b, err := t.src.read(ctx, t.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		what := "job " + t.o.Job
		if t.o.Service != "" {
			what = "service " + t.o.Service
		}
		return c, fmt.Errorf("%w: no %s on %s: %s does not exist there", ErrInput, what, t.src.where(), t.path)
	case errors.Is(err, errUnreachable):
		return c, fmt.Errorf("%w: %v", ErrInput, err)
	case err != nil:
		return c, err
	}
	// A login shell's start-up files may print before the command's output does.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%w: %s on %s is not a connection file: %v", ErrInput, t.path, t.src.where(), err)
	}
	state, reason := serviceState(b)
	t.seen(c, state, reason)
	if c.Port <= 0 || (c.HeadAddress == "" && c.HeadHost == "") {
		return c, fmt.Errorf("%w: %s on %s names no head and port", ErrInput, t.path, t.src.where())
	}
	return c, nil
}

// keyLine copies the key when asked and says where it is; the key itself is never printed.
func (t *Tunnel) keyLine(ctx context.Context, c jobfiles.Connection) (string, error) {
	if c.APIKeyFile == "" {
		return "# the endpoint takes no API key", nil
	}
	if !t.o.FetchKey {
		return fmt.Sprintf("# the API key is in %s on %s; --fetch-key copies it here (mode 0600)", c.APIKeyFile, t.src.where()), nil
	}
	out, err := t.src.read(ctx, c.APIKeyFile)
	if err != nil {
		return "", fmt.Errorf("fetch the API key: %w", err)
	}
	key := []byte(lastLine(string(out)) + "\n") // the key is the file's one line, after anything a login shell printed
	if len(key) < 2 {
		return "", fmt.Errorf("fetch the API key: %s is empty on %s", c.APIKeyFile, t.src.where())
	}
	path := t.o.KeyFile
	if path == "" {
		if t.o.Home == "" {
			return "", fmt.Errorf("%w: no home directory for the key; give --key-file", ErrInput)
		}
		base := filepath.Join(t.o.Home, ".llm-agent")
		for _, d := range []string{base, filepath.Join(base, "keys")} {
			if err := securefs.EnsureDir(d); err != nil {
				return "", fmt.Errorf("key directory: %w", err)
			}
		}
		path = filepath.Join(base, "keys", c.JobID)
	} else if err := securefs.CheckDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("%w: --key-file: %v", ErrInput, err)
	}
	if err := jobfiles.WriteFileAtomic(path, key, 0o600); err != nil {
		return "", err
	}
	return fmt.Sprintf("export OPENAI_API_KEY=$(cat %s)", path), nil
}

func (t *Tunnel) currentTarget() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.target
}

// show updates the status line: redrawn in place on a terminal, a new line on each change
// elsewhere (a log).
func (t *Tunnel) show(state string, c jobfiles.Connection, detail string) {
	line := fmt.Sprintf("%s %-12s %s", time.Now().Format("15:04:05"), state, t.name(c))
	if detail != "" {
		line += " - " + detail
	}
	key := state + "|" + detail
	t.outMu.Lock()
	defer t.outMu.Unlock()
	if t.o.Terminal {
		fmt.Fprintf(t.o.Out, "\r\033[K%s", line)
	} else if key != t.state {
		fmt.Fprintln(t.o.Out, line)
	}
	t.state = key
}

// end writes the last line.
func (t *Tunnel) end(msg string) {
	t.outMu.Lock()
	defer t.outMu.Unlock()
	if t.o.Terminal {
		fmt.Fprint(t.o.Out, "\r\033[K")
	}
	fmt.Fprintf(t.o.Out, "%s %s\n", time.Now().Format("15:04:05"), msg)
}
