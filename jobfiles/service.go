package jobfiles

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/llm-agent/llm-agent/agent/securefs"
)

// ServicesDir is where services keep their files, under the home directory: one folder per
// service, holding its connection file, its key and the lock its jobs take to change them.
const ServicesDir = ".llm-agent/services"

// ErrService marks a service name, folder or file that cannot be used.
var ErrService = errors.New("service")

// A service's name goes into paths and into the login host's shell: a plain name.
var serviceName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// CheckServiceName refuses a name that is not a plain one.
func CheckServiceName(name string) error {
	if !serviceName.MatchString(name) {
		return fmt.Errorf("%w: name %q: use up to 64 letters, digits, '.', '_' and '-'", ErrService, name)
	}
	return nil
}

// ServiceDir is the folder of service name under home.
func ServiceDir(home, name string) string { return filepath.Join(home, ServicesDir, name) }

// The states of a service, as its file's service.state says.
const (
	ServiceStarting = "starting" // its first job is not ready yet
	ServiceServing  = "serving"  // a job serves
	ServiceWaiting  = "waiting for successor"
	ServiceStopping = "stopping" // llm-agent stop --service ends the chain
	ServiceAsleep   = "asleep"   // --idle-release ended its job; a wake queues it again
	ServiceWaking   = "waking"   // a wake queued its job, which is not ready yet
	ServiceStopped  = "stopped"
	ServiceFailed   = "failed"
)

// ServiceJob is one job of a service's history.
type ServiceJob struct {
	JobID    string     `json:"job_id"`
	Node     string     `json:"node"`
	StateDir string     `json:"state_dir"`
	Started  time.Time  `json:"started_at"`
	Ready    *time.Time `json:"ready_at,omitempty"`
	Ended    *time.Time `json:"ended_at,omitempty"`
	// Of is the job that queued this one, its predecessor.
	Of string `json:"successor_of,omitempty"`
	// Why says why the job ended: handed over, the time limit, stopped, failed (and why).
	Why string `json:"why_ended,omitempty"`
	// Submitted is when a wake queued the job: its cold start runs from then to Ready.
	Submitted *time.Time `json:"submitted_at,omitempty"`
}

// Successor is the job queued to take over from the current one.
type Successor struct {
	JobID string `json:"job_id,omitempty"`
	// State is "pending" (in the queue, Reason says why), "running", "ready", "failed" (it
	// ended before it was ready, or sbatch refused it: Reason says why) or "cancelled".
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Attempts counts the submissions for this handover.
	Attempts int `json:"attempts"`
	// Of is the job that submitted it; Dependency what it waits for.
	Of         string `json:"of"`
	Dependency string `json:"dependency,omitempty"`
}

// ServiceInfo is a service's own part of its file.
type ServiceInfo struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Current is the job that serves now, or served last.
	Current string `json:"current_job"`
	// Until is when the chain ends; no successor is queued for a job that ends after it.
	Until *time.Time `json:"until,omitempty"`
	// Handover is how long before a job's end its successor may start.
	Handover string `json:"handover,omitempty"`
	// Ended is set once the chain ends: stopped on purpose, its time over, or its successor
	// failed past the retries. No job queues a successor then.
	Ended     bool       `json:"ended"`
	Successor *Successor `json:"successor,omitempty"`
	// Asleep is when the service fell asleep (--idle-release), while it is.
	Asleep *time.Time `json:"asleep_at,omitempty"`
	// Waking is the job a wake queued, until it serves.
	Waking *Wake `json:"waking,omitempty"`
	// Extras are the jobs added under load (--max-jobs), until they end.
	Extras []ExtraJob   `json:"extra_jobs,omitempty"`
	Jobs   []ServiceJob `json:"jobs"`
}

// Job returns the history's entry of job id, or nil.
func (s *ServiceInfo) Job(id string) *ServiceJob {
	for i := range s.Jobs {
		if s.Jobs[i].JobID == id {
			return &s.Jobs[i]
		}
	}
	return nil
}

// ServiceFile is a service's connection.json: the connection of the job that serves now, so
// that every reader of a job's connection file reads it as one, and the service's part.
type ServiceFile struct {
	Connection
	Service ServiceInfo `json:"service"`
}

// ReadService reads a service's file from its folder.
func ReadService(dir string) (ServiceFile, error) {
	var s ServiceFile
	err := ReadJSON(filepath.Join(dir, ConnectionFile), &s)
	return s, err
}

// UpdateService changes a service's file under the service's lock: f gets the file as it is
// (empty when there is none yet) and the file is written back, atomically and with mode 0600,
// unless f fails or changed nothing (every write of a job's connection file comes here). The folder and the one above it are made private if missing and refused
// when another user could write to them.
func UpdateService(dir string, f func(s *ServiceFile) error) (ServiceFile, error) {
	var s ServiceFile
	for _, d := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir), dir} {
		if err := securefs.EnsureDir(d); err != nil {
			return s, fmt.Errorf("%w: %w", ErrService, err)
		}
	}
	unlock, err := LockFile(filepath.Join(dir, ".lock"))
	if err != nil {
		return s, err
	}
	defer unlock()
	if s, err = ReadService(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	before, _ := json.Marshal(s)
	if err := f(&s); err != nil {
		return s, err
	}
	if after, _ := json.Marshal(s); bytes.Equal(before, after) {
		return s, nil
	}
	s.UpdatedAt = time.Now().UTC()
	return s, WriteJSONAtomic(filepath.Join(dir, ConnectionFile), s, 0o600)
}

// LockFile takes the exclusive lock of path, made with mode 0600 and never through a link, and
// returns its release.
func LockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
