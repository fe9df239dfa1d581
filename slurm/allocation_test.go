package slurm

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func envFunc(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestAllocationFromEnv(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		hostname string
		check    func(t *testing.T, a Allocation)
	}{
		{"no slurm: one local node", map[string]string{"CUDA_VISIBLE_DEVICES": "0,1"}, "ws1", func(t *testing.T, a Allocation) {
			assert.True(t, a.Local)
			assert.Equal(t, []string{"ws1"}, a.Nodes)
			assert.True(t, a.IsHead())
			assert.Equal(t, 2, a.GPUs)
			assert.Regexp(t, `^local-\d+$`, a.JobID)
		}},
		{"three nodes, second node", map[string]string{
			"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "gpu[001-003]", "SLURM_NODEID": "1",
			"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_CPUS_ON_NODE": "32",
			"SLURM_JOB_END_TIME": "1800000000", "SLURM_RESTART_COUNT": "2", "SLURM_SUBMIT_HOST": "login2",
			"SLURM_STEP_ID": "0", "SLURM_SRUN_COMM_PORT": "4444", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.1",
		}, "gpu002", func(t *testing.T, a Allocation) {
			assert.False(t, a.Local)
			assert.Equal(t, "123", a.JobID)
			assert.Equal(t, []string{"gpu001", "gpu002", "gpu003"}, a.Nodes)
			assert.Equal(t, "gpu002", a.Hostname())
			assert.Equal(t, "gpu001", a.Head())
			assert.False(t, a.IsHead())
			assert.Equal(t, 4, a.GPUs)
			assert.Equal(t, 12, a.TotalGPUs())
			assert.Equal(t, 32, a.CPUs)
			assert.Equal(t, time.Unix(1800000000, 0), a.EndTime)
			assert.Equal(t, 2, a.RestartCount)
			assert.Equal(t, "login2", a.SubmitHost)
			assert.Equal(t, "10.0.0.1:4444", a.LaunchID)
		}},
		{"node id from host name when SLURM_NODEID is unset", map[string]string{
			"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "a,b,c",
		}, "c.cluster.example", func(t *testing.T, a Allocation) {
			assert.Equal(t, 2, a.NodeID)
		}},
		{"SLURMD_NODENAME wins over the host name", map[string]string{
			"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "a,b", "SLURMD_NODENAME": "b",
		}, "whatever", func(t *testing.T, a Allocation) {
			assert.Equal(t, 1, a.NodeID)
		}},
		{"GPU count from CUDA_VISIBLE_DEVICES", map[string]string{
			"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "a", "SLURM_NODEID": "0", "CUDA_VISIBLE_DEVICES": "GPU-aaa, GPU-bbb",
		}, "a", func(t *testing.T, a Allocation) {
			assert.Equal(t, 2, a.GPUs)
			assert.Equal(t, []string{"GPU-aaa", "GPU-bbb"}, a.GPUIDs)
		}},
		{"NoDevFiles means no GPUs", map[string]string{"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "a", func(t *testing.T, a Allocation) {
			assert.Equal(t, 0, a.GPUs)
			assert.Empty(t, a.GPUIDs)
		}},
		{"end time zero means none", map[string]string{
			"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "a", "SLURM_NODEID": "0", "SLURM_JOB_END_TIME": "0",
		}, "a", func(t *testing.T, a Allocation) {
			assert.True(t, a.EndTime.IsZero())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := AllocationFromEnv(envFunc(tt.env), tt.hostname)
			require.NoError(t, err)
			tt.check(t, a)
		})
	}
}

func TestAllocationFromEnvErrors(t *testing.T) {
	base := func(extra map[string]string) map[string]string {
		m := map[string]string{"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "0"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name    string
		env     map[string]string
		message string
	}{
		{"missing node list", map[string]string{"SLURM_JOB_ID": "7"}, "SLURM_JOB_NODELIST is empty"},
		{"bad node list", base(map[string]string{"SLURM_JOB_NODELIST": "n[1-"}), "unclosed"},
		{"node list of separators", base(map[string]string{"SLURM_JOB_NODELIST": ",,"}), "names no host"},
		{"node id out of range", base(map[string]string{"SLURM_NODEID": "2"}), `SLURM_NODEID="2" is not an index into the 2 nodes`},
		{"node id not a number", base(map[string]string{"SLURM_NODEID": "x"}), `SLURM_NODEID="x"`},
		{"host not in list", map[string]string{"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]"}, `this host "elsewhere" is not in SLURM_JOB_NODELIST`},
		{"gpu count not a number", base(map[string]string{"SLURM_GPUS_ON_NODE": "four"}), `SLURM_GPUS_ON_NODE="four"`},
		{"gpu count disagrees", base(map[string]string{"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1"}), "lists 2 GPUs"},
		{"cpus negative", base(map[string]string{"SLURM_CPUS_ON_NODE": "-1"}), "SLURM_CPUS_ON_NODE"},
		{"end time garbage", base(map[string]string{"SLURM_JOB_END_TIME": "soon"}), "not a Unix time"},
		{"restart count garbage", base(map[string]string{"SLURM_RESTART_COUNT": "x"}), "SLURM_RESTART_COUNT"},
		{"job id with a slash", base(map[string]string{"SLURM_JOB_ID": "../7"}), "is not a job id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := AllocationFromEnv(envFunc(tt.env), "elsewhere")
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrAllocation)
			assert.Contains(t, err.Error(), tt.message)
		})
	}
}

// TestElection checks that every node computes the same head, the first host of the list, with
// no messages.
func TestElection(t *testing.T) {
	tests := []struct {
		list string
		head string
	}{
		{"node[1-3]", "node1"},
		{"gpu[010,002-003]", "gpu010"},
		{"b,a", "b"},
		{"c[1-2]-ib[3-4]", "c1-ib3"},
	}
	for _, tt := range tests {
		t.Run(tt.list, func(t *testing.T) {
			var heads []string
			for id := 0; ; id++ {
				a, err := AllocationFromEnv(envFunc(map[string]string{
					"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": tt.list, "SLURM_NODEID": strconv.Itoa(id),
				}), "x")
				if err != nil {
					break
				}
				heads = append(heads, a.Head())
				assert.Equal(t, id == 0, a.IsHead())
				assert.Equal(t, a.Nodes[0] == a.Hostname(), a.IsHead())
			}
			require.NotEmpty(t, heads)
			for _, h := range heads {
				assert.Equal(t, tt.head, h)
			}
		})
	}
}

func TestShapeFromEnv(t *testing.T) {
	s, err := ShapeFromEnv(envFunc(map[string]string{"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4", "CUDA_VISIBLE_DEVICES": "0,1"}))
	require.NoError(t, err)
	assert.Equal(t, Shape{InJob: true, Nodes: 4, GPUsPerNode: 2, GPUIDs: []string{"0", "1"}}, s)
	s, err = ShapeFromEnv(envFunc(nil))
	require.NoError(t, err)
	assert.False(t, s.InJob)
	assert.Zero(t, s.Nodes)
	_, err = ShapeFromEnv(envFunc(map[string]string{"SLURM_JOB_NUM_NODES": "many"}))
	assert.ErrorIs(t, err, ErrAllocation)
}
