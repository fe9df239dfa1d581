// Package gpu exports NVML metrics of the job's own GPUs in Prometheus format. It knows nothing
// of the job beyond the GPU ids it is given.
package gpu

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrSelect is wrapped by errors about which GPUs belong to the job.
var ErrSelect = errors.New("select job GPUs")

// Device is one GPU of the job.
type Device struct {
	// Index is NVML's index of the device, as nvidia-smi numbers it.
	Index int
	UUID  string
	Name  string
	BusID string
	nvml  nvml.Device
}

// nvmlError wraps an NVML return code with the operation that produced it.
func nvmlError(op string, ret nvml.Return) error {
	return fmt.Errorf("nvml %s: %w", op, ret)
}

// DeviceAccessible reports whether this process may open the GPU with the given minor number.
// Inside a Slurm device cgroup the other jobs' GPUs are denied, which is how a renumbered
// CUDA_VISIBLE_DEVICES is matched to the right NVML devices.
func DeviceAccessible(minor int) bool {
	f, err := os.Open("/dev/nvidia" + strconv.Itoa(minor))
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// SelectDevices returns the job's GPUs. visible is CUDA_VISIBLE_DEVICES split on commas: UUIDs
// are looked up directly; indices count the accessible GPUs in PCI bus order, as CUDA does with
// CUDA_DEVICE_ORDER=PCI_BUS_ID. With visible empty, inJob selects none (a job without GPUs must
// not report the node's) and otherwise every accessible GPU.
func SelectDevices(lib nvml.Interface, visible []string, inJob bool, accessible func(minor int) bool) ([]Device, error) {
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: %w", ErrSelect, nvmlError("device count", ret))
	}
	var candidates []Device
	for i := 0; i < count; i++ {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue // not ours to see
		}
		d, err := describe(h)
		if err != nil {
			return nil, fmt.Errorf("%w: device %d: %w", ErrSelect, i, err)
		}
		if minor, ret := h.GetMinorNumber(); ret == nvml.SUCCESS && accessible != nil && !accessible(minor) {
			continue
		}
		candidates = append(candidates, d)
	}
	sort.Slice(candidates, func(i, j int) bool {
		return strings.ToLower(candidates[i].BusID) < strings.ToLower(candidates[j].BusID)
	})
	if len(visible) == 0 {
		if inJob {
			return nil, nil
		}
		return candidates, nil
	}
	var out []Device
	seen := map[string]bool{}
	for _, v := range visible {
		d, err := pick(candidates, v)
		if err != nil {
			return nil, err
		}
		if !seen[d.UUID] {
			seen[d.UUID] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// pick finds the device one CUDA_VISIBLE_DEVICES entry names: a UUID, or an index into the
// devices the job can access, in PCI bus order.
func pick(candidates []Device, v string) (Device, error) {
	if strings.HasPrefix(v, "GPU-") || strings.HasPrefix(v, "MIG-") {
		for _, c := range candidates {
			if strings.EqualFold(c.UUID, v) {
				return c, nil
			}
		}
		return Device{}, fmt.Errorf("%w: CUDA_VISIBLE_DEVICES names %s, which is not a GPU this job can access", ErrSelect, v)
	}
	k, err := strconv.Atoi(v)
	if err != nil || k < 0 {
		return Device{}, fmt.Errorf("%w: CUDA_VISIBLE_DEVICES entry %q is neither an index nor a GPU UUID", ErrSelect, v)
	}
	if k >= len(candidates) {
		return Device{}, fmt.Errorf("%w: CUDA_VISIBLE_DEVICES names GPU %d, but this job can access %d", ErrSelect, k, len(candidates))
	}
	return candidates[k], nil
}

func describe(h nvml.Device) (Device, error) {
	d := Device{nvml: h}
	var ret nvml.Return
	if d.Index, ret = h.GetIndex(); ret != nvml.SUCCESS {
		return d, nvmlError("index", ret)
	}
	if d.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return d, nvmlError("uuid", ret)
	}
	if d.Name, ret = h.GetName(); ret != nvml.SUCCESS {
		return d, nvmlError("name", ret)
	}
	pci, ret := h.GetPciInfo()
	if ret != nvml.SUCCESS {
		return d, nvmlError("pci info", ret)
	}
	d.BusID = busID(pci)
	return d, nil
}

// busID returns the PCI bus id NVML reports, "00000000:18:00.0".
func busID(p nvml.PciInfo) string {
	b := make([]byte, 0, len(p.BusId))
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// TotalMemory returns the memory of the first of the job's GPUs, for the planner.
func TotalMemory(lib nvml.Interface, visible []string, inJob bool, accessible func(minor int) bool) (int64, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return 0, nvmlError("init", ret)
	}
	defer lib.Shutdown()
	devices, err := SelectDevices(lib, visible, inJob, accessible)
	if err != nil {
		return 0, err
	}
	if len(devices) == 0 {
		return 0, fmt.Errorf("%w: no GPU", ErrSelect)
	}
	m, ret := devices[0].nvml.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return 0, nvmlError("memory info", ret)
	}
	return int64(m.Total), nil
}
