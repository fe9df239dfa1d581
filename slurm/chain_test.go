package slurm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A line of scontrol show job -o, as Slurm 22.05 printed it in the mini-cluster.
const scontrolLine = `JobId=826 JobName=probe UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901577 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:01 TimeLimit=00:02:00 TimeMin=N/A SubmitTime=2026-11-30T10:32:35 EligibleTime=2026-11-30T10:32:35 AccrueTime=2026-11-30T10:32:35 StartTime=2026-11-30T10:32:36 EndTime=2026-11-30T10:34:36 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T10:32:36 Scheduler=Main Partition=debug AllocNode:Sid=localhost:14183 ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/var/tmp/sq/s.sh --model /m --for=6m WorkDir=/var/tmp/sq StdErr=/var/tmp/sq/o-826.out StdIn=/dev/null StdOut=/var/tmp/sq/o-826.out Power= TresPerNode=gres:gpu:1`

func TestParseJobInfo(t *testing.T) {
	j, err := ParseJobInfo(scontrolLine)
	require.NoError(t, err)
	assert.Equal(t, "826", j.ID)
	assert.Equal(t, 2*time.Minute, j.TimeLimit)
	assert.Equal(t, "/var/tmp/sq/s.sh --model /m --for=6m", j.Command)
	assert.Equal(t, "/var/tmp/sq", j.WorkDir)
	assert.Equal(t, "", j.Account)
	assert.Equal(t, 1, j.Nodes)
	assert.Equal(t, 1, j.CPUsPerTask)
	assert.Equal(t, time.Date(2026, 11, 30, 10, 32, 36, 0, time.Local), j.StartTime)
	assert.Equal(t, []string{"--job-name=probe", "--nodes=1", "--ntasks-per-node=1", "--time=0-00:02:00",
		"--partition=debug", "--chdir=/var/tmp/sq", "--gpus-per-node=1", "--cpus-per-task=1",
		"--output=/var/tmp/sq/o-%j.out", "--error=/var/tmp/sq/o-%j.out"}, j.ResubmitArgs())

	_, err = ParseJobInfo("slurm_load_jobs error: Invalid job id specified")
	assert.Error(t, err)
}

// TestJobPattern: the id goes back to %j only in the file's name and only where it stands
// alone; a directory whose name holds the id's digits stays as it is.
func TestJobPattern(t *testing.T) {
	assert.Equal(t, "/var/tmp/run-3510189482/T/job-%j.out", jobPattern("/var/tmp/run-3510189482/T/job-948.out", "948"))
	assert.Equal(t, "/o/%j-%j.err", jobPattern("/o/948-948.err", "948"))
	assert.Equal(t, "/o/job-19480.out", jobPattern("/o/job-19480.out", "948"))
	assert.Equal(t, "/o/fixed.out", jobPattern("/o/fixed.out", "948"))
}

func TestFormatTimeLimit(t *testing.T) {
	assert.Equal(t, "0-00:02:00", FormatTimeLimit(2*time.Minute))
	assert.Equal(t, "1-12:00:01", FormatTimeLimit(36*time.Hour+500*time.Millisecond))
}

func TestQueueState(t *testing.T) {
	assert.True(t, QueueState{State: "PENDING"}.Pending())
	assert.False(t, QueueState{State: "RUNNING"}.Ended())
	assert.True(t, QueueState{State: "FAILED"}.Ended())
	assert.True(t, QueueState{Gone: true}.Ended())
}

// fakeCommands puts stand-ins for sbatch, squeue, scancel and scontrol first on PATH; each
// runs the shell text given for it.
func fakeCommands(t *testing.T, scripts map[string]string) {
	dir := t.TempDir()
	for name, body := range scripts {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755))
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

func TestCommands(t *testing.T) {
	ctx := context.Background()
	fakeCommands(t, map[string]string{
		"sbatch":   `[ "$1" = --parsable ] && [ "$2" = --nodes=1 ] || exit 3; echo "4242;cluster"`,
		"squeue":   `case "$3" in 1) echo "PENDING|Dependency";; 2) echo "RUNNING|None";; 3) ;; *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac`,
		"scancel":  `[ "$1" = 7 ] && exit 0; echo "scancel: error: Kill job error on job id $1: Access/permission denied" >&2; exit 1`,
		"scontrol": `[ "$1" = write ] && { echo '#!/bin/sh'; exit 0; }; echo '` + scontrolLine + `'`,
	})
	id, err := Submit(ctx, []string{"--nodes=1"}, os.Environ())
	require.NoError(t, err)
	assert.Equal(t, "4242", id)
	_, err = Submit(ctx, []string{"--nodes=2"}, os.Environ())
	require.Error(t, err)

	q, err := Queue(ctx, "1")
	require.NoError(t, err)
	assert.Equal(t, QueueState{State: "PENDING", Reason: "Dependency"}, q)
	q, err = Queue(ctx, "2")
	require.NoError(t, err)
	assert.Equal(t, QueueState{State: "RUNNING"}, q)
	for _, gone := range []string{"3", "9"} {
		q, err = Queue(ctx, gone)
		require.NoError(t, err)
		assert.True(t, q.Gone && q.Ended(), gone)
	}

	require.NoError(t, Cancel(ctx))
	require.NoError(t, Cancel(ctx, "7"))
	err = Cancel(ctx, "8")
	require.Error(t, err)
	assert.Equal(t, "scancel: scancel: error: Kill job error on job id 8: Access/permission denied", err.Error(), "the command's own words")

	var c Commands
	j, err := c.ShowJob(ctx, "826")
	require.NoError(t, err)
	assert.Equal(t, "probe", j.Name)
	script, err := c.BatchScript(ctx, "826")
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\n", string(script))
	id, err = c.Submit(ctx, []string{"--nodes=1"}, os.Environ())
	require.NoError(t, err)
	assert.Equal(t, "4242", id)
	q, err = c.Queue(ctx, "1")
	require.NoError(t, err)
	assert.True(t, q.Pending())
}
