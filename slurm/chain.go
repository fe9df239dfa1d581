package slurm

// What a job needs of Slurm to queue its own successor: its own settings (scontrol show job),
// its batch script, sbatch, squeue for the successor's state and scancel.

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// scontrolKey is the shape of scontrol's keys (JobId, CPUs/Task, AllocNode:Sid); the
// script's arguments in Command begin otherwise, with a dash or a path, as a rule.
var scontrolKey = regexp.MustCompile(`^[A-Z][A-Za-z:/_]*$`)

// commandTimeout bounds one call of a Slurm command: slurmctld answers within MessageTimeout.
const commandTimeout = 30 * time.Second

// JobInfo is what scontrol says of a job that a resubmission repeats.
type JobInfo struct {
	ID, Name, Partition, Account, QOS string
	TimeLimit                         time.Duration
	Nodes, CPUsPerTask                int
	// Features is the job's --constraint; TresPerNode its GPUs or other generic resources per
	// node ("gres:gpu:4").
	Features, TresPerNode   string
	WorkDir, StdOut, StdErr string
	// Command is the batch script's path and arguments as scontrol joins them with spaces.
	Command   string
	StartTime time.Time
}

// ParseJobInfo reads one line of `scontrol show job -o`.
func ParseJobInfo(line string) (JobInfo, error) {
	fields := map[string]string{}
	// Values have no spaces except Command's, which runs up to the next known key.
	key := ""
	for _, tok := range strings.Fields(line) {
		k, v, ok := strings.Cut(tok, "=")
		if ok && scontrolKey.MatchString(k) {
			key = k
			fields[key] = v
			continue
		}
		if key == "Command" {
			fields[key] += " " + tok
		}
	}
	j := JobInfo{ID: fields["JobId"], Name: fields["JobName"], Partition: fields["Partition"],
		Account: none(fields["Account"]), QOS: none(fields["QOS"]), Features: none(fields["Features"]),
		TresPerNode: none(fields["TresPerNode"]), WorkDir: fields["WorkDir"], StdOut: fields["StdOut"],
		StdErr: fields["StdErr"], Command: fields["Command"]}
	if j.ID == "" {
		return j, fmt.Errorf("scontrol: no JobId in %q", line)
	}
	var err error
	if tl := fields["TimeLimit"]; tl != "" && tl != "UNLIMITED" && tl != "Partition_Limit" {
		if j.TimeLimit, err = ParseTimeLimit(tl); err != nil {
			return j, err
		}
	}
	j.Nodes, _ = strconv.Atoi(fields["NumNodes"])
	j.CPUsPerTask, _ = strconv.Atoi(fields["CPUs/Task"])
	if j.StartTime, err = parseTime(fields["StartTime"]); err != nil {
		return j, err
	}
	return j, nil
}

func none(s string) string {
	if s == "(null)" || s == "N/A" {
		return ""
	}
	return s
}

// ShowJob asks scontrol for a job's settings.
func ShowJob(ctx context.Context, id string) (JobInfo, error) {
	out, err := run(ctx, "scontrol", "show", "job", "-o", id)
	if err != nil {
		return JobInfo{}, err
	}
	return ParseJobInfo(strings.TrimSpace(string(out)))
}

// BatchScript returns the batch script a job was submitted with, as Slurm keeps it.
func BatchScript(ctx context.Context, id string) ([]byte, error) {
	return run(ctx, "scontrol", "write", "batch_script", id, "-")
}

// ResubmitArgs are the sbatch options that ask for what j had: its nodes, time, partition,
// account, QOS, constraint, generic resources and CPUs, its name, directory and output files
// (the job id in their names turned back into %j). The script's own #SBATCH lines give the
// rest.
func (j JobInfo) ResubmitArgs() []string {
	args := []string{"--job-name=" + j.Name, "--nodes=" + strconv.Itoa(j.Nodes), "--ntasks-per-node=1"}
	if j.TimeLimit > 0 {
		args = append(args, "--time="+FormatTimeLimit(j.TimeLimit))
	}
	add := func(flag, v string) {
		if v != "" {
			args = append(args, flag+"="+v)
		}
	}
	add("--partition", j.Partition)
	add("--account", j.Account)
	add("--qos", j.QOS)
	add("--constraint", j.Features)
	add("--chdir", j.WorkDir)
	// GPUs as the shipped scripts ask for them, which a command-line --gpus-per-node
	// overrides (a --gres=gpu would be added to the script's instead); other resources as
	// --gres.
	var gres []string
	for _, r := range strings.Split(j.TresPerNode, ",") {
		r = strings.TrimPrefix(r, "gres:")
		if n, ok := strings.CutPrefix(r, "gpu:"); ok && !strings.Contains(n, ":") {
			add("--gpus-per-node", n)
		} else if r != "" {
			gres = append(gres, r)
		}
	}
	add("--gres", strings.Join(gres, ","))
	if j.CPUsPerTask > 0 {
		add("--cpus-per-task", strconv.Itoa(j.CPUsPerTask))
	}
	add("--output", jobPattern(j.StdOut, j.ID))
	add("--error", jobPattern(j.StdErr, j.ID))
	return args
}

// jobPattern turns the job id back into %j in an output file's name, where Slurm expanded it:
// in the file's own name only, and only where the id stands alone (job-948.out, not
// run-3510189482/ or job-19480.out).
func jobPattern(path, id string) string {
	dir, base := filepath.Split(path)
	var b strings.Builder
	for {
		i := strings.Index(base, id)
		if i < 0 {
			b.WriteString(base)
			return dir + b.String()
		}
		end := i + len(id)
		alone := (i == 0 || !isDigit(base[i-1])) && (end == len(base) || !isDigit(base[end]))
		b.WriteString(base[:i])
		if alone {
			b.WriteString("%j")
		} else {
			b.WriteString(id)
		}
		base = base[end:]
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// FormatTimeLimit writes d as sbatch --time reads it, D-HH:MM:SS, rounded up to the second.
func FormatTimeLimit(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return fmt.Sprintf("%d-%02d:%02d:%02d", s/86400, s%86400/3600, s%3600/60, s%60)
}

// Submit runs sbatch with args, in env, and returns the new job's id.
func Submit(ctx context.Context, args, env []string) (string, error) {
	out, err := runIn(ctx, env, "sbatch", append([]string{"--parsable"}, args...)...)
	if err != nil {
		return "", err
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(out)), ";") // "id;cluster" on a federation
	if _, err := strconv.Atoi(id); err != nil {
		return "", fmt.Errorf("sbatch printed %q, not a job id", strings.TrimSpace(string(out)))
	}
	return id, nil
}

// QueueState is a job's state and reason as squeue shows them; Gone when squeue no longer
// lists it (it ended and left the queue).
type QueueState struct {
	State, Reason string
	Gone          bool
}

// Pending tells whether the job waits in the queue.
func (q QueueState) Pending() bool { return q.State == "PENDING" }

// Ended tells whether the job has ended, whether squeue still lists it or not.
func (q QueueState) Ended() bool {
	switch q.State {
	case "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING":
		return false
	}
	return true
}

// Queue asks squeue for a job's state and reason.
func Queue(ctx context.Context, id string) (QueueState, error) {
	out, err := run(ctx, "squeue", "-h", "-j", id, "-o", "%T|%r")
	if err != nil {
		// squeue refuses a job id it no longer knows.
		if strings.Contains(err.Error(), "Invalid job id") {
			return QueueState{Gone: true}, nil
		}
		return QueueState{}, err
	}
	line := strings.TrimSpace(string(out))
	if line == "" {
		return QueueState{Gone: true}, nil
	}
	state, reason, _ := strings.Cut(line, "|")
	if reason == "None" {
		reason = ""
	}
	return QueueState{State: state, Reason: reason}, nil
}

// Cancel runs scancel on the jobs.
func Cancel(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := run(ctx, "scancel", ids...)
	return err
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runIn(ctx, nil, name, args...)
}

// runIn runs a Slurm command within commandTimeout, in env (nil: the agent's own), and keeps
// its own words when it fails.
func runIn(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return nil, commandError(name, err)
	}
	return out, nil
}

// commandError keeps the command's last line of error output, which says why.
func commandError(name string, err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		lines := strings.Split(strings.TrimSpace(string(ee.Stderr)), "\n")
		if msg := strings.TrimSpace(lines[len(lines)-1]); msg != "" {
			return fmt.Errorf("%s: %s", name, msg)
		}
	}
	return fmt.Errorf("%s: %w", name, err)
}

// Commands are the real Slurm commands, as the agent's Scheduler.
type Commands struct{}

// ShowJob is ShowJob.
func (Commands) ShowJob(ctx context.Context, id string) (JobInfo, error) { return ShowJob(ctx, id) }

// BatchScript is BatchScript.
func (Commands) BatchScript(ctx context.Context, id string) ([]byte, error) {
	return BatchScript(ctx, id)
}

// Submit is Submit.
func (Commands) Submit(ctx context.Context, args, env []string) (string, error) {
	return Submit(ctx, args, env)
}

// Queue is Queue.
func (Commands) Queue(ctx context.Context, id string) (QueueState, error) { return Queue(ctx, id) }

// Cancel is Cancel.
func (Commands) Cancel(ctx context.Context, ids ...string) error { return Cancel(ctx, ids...) }
