package node

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"syscall"

	"github.com/llm-agent/llm-agent/agent/config"
	"github.com/llm-agent/llm-agent/jobfiles"
)

// ErrPort is wrapped by errors about ports that cannot be used.
var ErrPort = errors.New("port unusable")

// jobSlots is how many jobs get distinct default ports on one node before defaults repeat.
const jobSlots = 100

// workerBlock is the size of a job's default Ray worker port range.
const workerBlock = 200

// JobOffset maps a job id to 0..99, so that concurrent jobs on one node prefer different ports.
func JobOffset(jobID string) int {
	if n, err := strconv.ParseUint(jobID, 10, 64); err == nil {
		return int(n % jobSlots)
	}
	h := fnv.New32a()
	h.Write([]byte(jobID))
	return int(h.Sum32() % jobSlots)
}

// PortProber tells whether a port is free. Busy ports return an error wrapping EADDRINUSE.
type PortProber interface {
	Probe(port int) error
	// Free returns a port the system considers free now.
	Free() (int, error)
}

// TCPProber probes ports by binding them on all addresses.
type TCPProber struct{}

var _ PortProber = TCPProber{}

// Probe binds port on every address and releases it.
func (TCPProber) Probe(port int) error {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	return l.Close()
}

// Free asks the kernel for an unused port.
func (TCPProber) Free() (int, error) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// portPicker hands out distinct ports: the preferred one when it is free, else a free one.
type portPicker struct {
	probe PortProber
	used  map[int]bool
	moved []string
}

func (p *portPicker) pick(name string, preferred int) (int, error) {
	if preferred > 0 && !p.used[preferred] {
		err := p.probe.Probe(preferred)
		if err == nil {
			p.used[preferred] = true
			return preferred, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return 0, fmt.Errorf("%w: %s port %d cannot be bound: %w; choose another with --%s", ErrPort, name, preferred, err, name)
		}
	}
	for tries := 0; tries < 20; tries++ {
		port, err := p.probe.Free()
		if err != nil {
			return 0, fmt.Errorf("%w: no free port for %s: %w", ErrPort, name, err)
		}
		if !p.used[port] {
			p.used[port] = true
			p.moved = append(p.moved, fmt.Sprintf("%s %d->%d", name, preferred, port))
			return port, nil
		}
	}
	return 0, fmt.Errorf("%w: no free port for %s", ErrPort, name)
}

// pickRange finds size free ports in a row, starting with [min,max] and then trying the other
// jobs' default blocks.
func (p *portPicker) pickRange(min, max, offset int) (int, int, error) {
	size := max - min + 1
	if p.rangeFree(min, max) {
		p.markRange(min, max)
		return min, max, nil
	}
	for k := 1; k <= jobSlots; k++ {
		lo := 11000 + workerBlock*((offset+k)%jobSlots)
		hi := lo + size - 1
		if hi > 65535 {
			continue
		}
		if p.rangeFree(lo, hi) {
			p.markRange(lo, hi)
			p.moved = append(p.moved, fmt.Sprintf("ray-worker-ports %d-%d->%d-%d", min, max, lo, hi))
			return lo, hi, nil
		}
	}
	return 0, 0, fmt.Errorf("%w: no free range of %d Ray worker ports; set --ray-worker-ports", ErrPort, size)
}

func (p *portPicker) rangeFree(lo, hi int) bool {
	for port := lo; port <= hi; port++ {
		if p.used[port] || p.probe.Probe(port) != nil {
			return false
		}
	}
	return true
}

func (p *portPicker) markRange(lo, hi int) {
	for port := lo; port <= hi; port++ {
		p.used[port] = true
	}
}

func orDefault(configured, def int) int {
	if configured != 0 {
		return configured
	}
	return def
}

// PickHeadPorts chooses every port of the job on the head. It returns the ports and a note for
// each port that had to move because its preferred value was busy.
func PickHeadPorts(cfg config.Config, jobID string, probe PortProber) (jobfiles.Ports, []string, error) {
	o := JobOffset(jobID)
	p := &portPicker{probe: probe, used: map[int]bool{}}
	var ports jobfiles.Ports
	var err error
	pick := func(dst *int, name string, preferred int) {
		if err == nil {
			*dst, err = p.pick(name, preferred)
		}
	}
	pick(&ports.API, "port", orDefault(cfg.Port, 8000+o))
	pick(&ports.Metrics, "metrics-port", orDefault(cfg.MetricsPort, 9500+o))
	pick(&ports.RayGCS, "ray-port", orDefault(cfg.RayPort, 6379+o))
	pick(&ports.Dashboard, "ray-dashboard-port", orDefault(cfg.DashboardPort, 8265+o))
	pick(&ports.RayClient, "ray-client-port", orDefault(cfg.RayClientPort, 10001+o))
	if cfg.Launcher == config.LauncherMP {
		// vLLM's ranks meet on the master port; VLLM_PORT is only where each vLLM starts
		// looking for free ports of its own, so it is not held here.
		pick(&ports.EngineMaster, "engine master port", 31000+o)
		ports.EngineRPC = 32000 + 20*o
	}
	if err != nil {
		return jobfiles.Ports{}, nil, err
	}
	defaults := nodePortDefaults(cfg, o)
	if err := p.pickNodePorts(&ports, defaults, o); err != nil {
		return jobfiles.Ports{}, nil, err
	}
	return ports, p.moved, nil
}

// nodePortDefaults returns the preferred per-node ports of a job.
func nodePortDefaults(cfg config.Config, o int) jobfiles.Ports {
	lo := orDefault(cfg.WorkerPortMin, 11000+workerBlock*o)
	hi := orDefault(cfg.WorkerPortMax, lo+workerBlock-1)
	return jobfiles.Ports{
		NodeManager:        orDefault(cfg.NodeManagerPort, 6500+o),
		ObjectManager:      orDefault(cfg.ObjectManagerPort, 6600+o),
		DashboardAgent:     6700 + o,
		DashboardAgentGRPC: 6800 + o,
		RayMetrics:         6900 + o,
		RuntimeEnvAgent:    7000 + o,
		WorkerMin:          lo,
		WorkerMax:          hi,
	}
}

func (p *portPicker) pickNodePorts(dst *jobfiles.Ports, pref jobfiles.Ports, o int) error {
	var err error
	pick := func(d *int, name string, preferred int) {
		if err == nil {
			*d, err = p.pick(name, preferred)
		}
	}
	pick(&dst.NodeManager, "ray-node-manager-port", pref.NodeManager)
	pick(&dst.ObjectManager, "ray-object-manager-port", pref.ObjectManager)
	pick(&dst.DashboardAgent, "ray dashboard agent", pref.DashboardAgent)
	pick(&dst.DashboardAgentGRPC, "ray dashboard agent grpc", pref.DashboardAgentGRPC)
	pick(&dst.RayMetrics, "ray metrics export", pref.RayMetrics)
	pick(&dst.RuntimeEnvAgent, "ray runtime env agent", pref.RuntimeEnvAgent)
	if err != nil {
		return err
	}
	dst.WorkerMin, dst.WorkerMax, err = p.pickRange(pref.WorkerMin, pref.WorkerMax, o)
	return err
}

// PickWorkerPorts chooses a worker node's own ports, preferring those the head published and
// its configured metrics port.
func PickWorkerPorts(cfg config.Config, jobID string, published jobfiles.Ports, probe PortProber) (jobfiles.Ports, []string, error) {
	o := JobOffset(jobID)
	p := &portPicker{probe: probe, used: map[int]bool{}}
	ports := published
	var err error
	if ports.Metrics, err = p.pick("metrics-port", orDefault(cfg.MetricsPort, 9500+o)); err != nil {
		return jobfiles.Ports{}, nil, err
	}
	if err := p.pickNodePorts(&ports, published, o); err != nil {
		return jobfiles.Ports{}, nil, err
	}
	return ports, p.moved, nil
}

// PickReplicaPorts picks the ports of a node's n replica gateways, one per slot: a worker's first
// takes the API port the head would use (--port, default 8000 + job offset), or a free one when
// that is busy on this node; the head's first is 0, its own engine behind its gateway; the
// others are free ones that taken does not hold.
func PickReplicaPorts(cfg config.Config, jobID string, probe PortProber, n int, head bool, taken ...int) ([]int, error) {
	p := &portPicker{probe: probe, used: map[int]bool{}}
	for _, t := range taken {
		p.used[t] = true
	}
	var out []int
	if head {
		out = append(out, 0) // the head's own engine is behind its gateway
	} else {
		port, err := p.pick("port", orDefault(cfg.Port, 8000+JobOffset(jobID)))
		if err != nil {
			return nil, err
		}
		out = append(out, port)
	}
	for len(out) < n {
		port, err := p.pick("replica port", 0)
		if err != nil {
			return nil, err
		}
		out = append(out, port)
	}
	return out, nil
}
