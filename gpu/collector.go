package gpu

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Collector.
type Options struct {
	// Node and Job label every series.
	Node, Job string
	// Visible is CUDA_VISIBLE_DEVICES split on commas.
	Visible []string
	// InJob is true inside a Slurm job: with no visible GPUs, none are reported.
	InJob bool
	// SlowInterval is how often the slow fields (energy, PCIe throughput) are sampled.
	SlowInterval time.Duration
	// Accessible tells whether this process may use a GPU by minor number; nil means all.
	Accessible func(minor int) bool
	// Logger receives the collector's few log lines.
	Logger hclog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// throttleReasons are the clock event reasons exported as 0/1 series, by label.
var throttleReasons = []struct {
	label string
	bit   uint64
}{
	{"gpu_idle", nvml.ClocksEventReasonGpuIdle},
	{"applications_clocks_setting", nvml.ClocksEventReasonApplicationsClocksSetting},
	{"sw_power_cap", nvml.ClocksEventReasonSwPowerCap},
	{"hw_slowdown", nvml.ClocksThrottleReasonHwSlowdown},
	{"sync_boost", nvml.ClocksEventReasonSyncBoost},
	{"sw_thermal_slowdown", nvml.ClocksEventReasonSwThermalSlowdown},
	{"hw_thermal_slowdown", nvml.ClocksThrottleReasonHwThermalSlowdown},
	{"hw_power_brake_slowdown", nvml.ClocksThrottleReasonHwPowerBrakeSlowdown},
	{"display_clock_setting", nvml.ClocksEventReasonDisplayClockSetting},
}

// slowSample holds the fields that take milliseconds to read.
type slowSample struct {
	energyJoules     float64
	hasEnergy        bool
	pcieTx, pcieRx   float64
	hasPCIe          bool
	takenAt          time.Time
	hasAnySlowSample bool
}

// Collector exports NVML metrics of the job's GPUs. Fast fields are read at scrape time; slow
// ones come from a background sample, exported with its age. Without a driver or GPU it reports
// llm_agent_gpu_up 0 and nothing else, and the rest of the agent runs on.
type Collector struct {
	lib     nvml.Interface
	opts    Options
	devices []Device
	up      bool

	mu   sync.Mutex
	slow map[string]slowSample

	errMu  sync.Mutex
	errors map[string]float64

	upDesc, scrapeDuration, sampleAge, readErrors                      *prometheus.Desc
	util, memUtil, memUsed, memFree, memTotal, temp, power, powerLimit *prometheus.Desc
	smClock, memClock, energy, throttle, ecc, pcie, processes          *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// New initialises NVML and selects the job's GPUs. It never fails: problems are logged once
// and the collector reports itself down.
func New(lib nvml.Interface, opts Options) *Collector {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SlowInterval <= 0 {
		opts.SlowInterval = 5 * time.Second
	}
	c := &Collector{lib: lib, opts: opts, slow: map[string]slowSample{}, errors: map[string]float64{}}
	c.describe()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		switch ret {
		case nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED:
			opts.Logger.Info("no NVIDIA driver on this node; GPU metrics off", "nvml", ret.Error())
		default:
			opts.Logger.Warn("NVML did not initialise; GPU metrics off", "nvml", ret.Error())
		}
		return c
	}
	devices, err := SelectDevices(lib, opts.Visible, opts.InJob, opts.Accessible)
	if err != nil {
		opts.Logger.Warn("cannot tell which GPUs are the job's; GPU metrics off", "error", err)
		lib.Shutdown()
		return c
	}
	c.devices, c.up = devices, true
	var names []string
	for _, d := range devices {
		names = append(names, strconv.Itoa(d.Index)+":"+d.UUID)
	}
	opts.Logger.Info("GPU metrics on", "gpus", names)
	c.sampleSlow()
	return c
}

// Devices returns the GPUs the collector reports.
func (c *Collector) Devices() []Device { return c.devices }

// Up reports whether NVML is working.
func (c *Collector) Up() bool { return c.up }

// Run samples the slow fields every SlowInterval until ctx ends, then shuts NVML down.
func (c *Collector) Run(ctx context.Context) {
	if !c.up {
		return
	}
	defer c.lib.Shutdown()
	tick := time.NewTicker(c.opts.SlowInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.sampleSlow()
		}
	}
}

// sampleSlow reads total energy (about 3 ms on an H100) and PCIe throughput (about 21 ms: the
// driver samples over a window) for every GPU.
func (c *Collector) sampleSlow() {
	for _, d := range c.devices {
		s := slowSample{takenAt: c.opts.Now(), hasAnySlowSample: true}
		if mj, ret := d.nvml.GetTotalEnergyConsumption(); c.ok("energy", ret) {
			s.energyJoules, s.hasEnergy = float64(mj)/1000, true
		}
		tx, ret1 := d.nvml.GetPcieThroughput(nvml.PCIE_UTIL_TX_BYTES)
		rx, ret2 := d.nvml.GetPcieThroughput(nvml.PCIE_UTIL_RX_BYTES)
		if c.ok("pcie_throughput", ret1) && c.ok("pcie_throughput", ret2) {
			// NVML reports KB/s.
			s.pcieTx, s.pcieRx, s.hasPCIe = float64(tx)*1024, float64(rx)*1024, true
		}
		c.mu.Lock()
		c.slow[d.UUID] = s
		c.mu.Unlock()
	}
}

// ok tells a value from an unsupported field (skipped quietly) and from a failed read
// (counted by field).
func (c *Collector) ok(field string, ret nvml.Return) bool {
	switch ret {
	case nvml.SUCCESS:
		return true
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		return false
	}
	c.errMu.Lock()
	c.errors[field]++
	c.errMu.Unlock()
	return false
}

func (c *Collector) describe() {
	consts := prometheus.Labels{"node": c.opts.Node, "job": c.opts.Job}
	gpuLabels := []string{"gpu", "uuid", "name"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc("llm_agent_gpu_"+name, help, append(append([]string{}, gpuLabels...), extra...), consts)
	}
	own := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("llm_agent_gpu_"+name, help, labels, consts)
	}
	c.upDesc = own("up", "1 when NVML works and the job's GPUs are known, 0 without a driver or GPU.")
	c.scrapeDuration = own("scrape_duration_seconds", "Time this scrape spent reading NVML.")
	c.sampleAge = own("slow_sample_age_seconds", "Age of the background sample of energy and PCIe throughput.")
	c.readErrors = own("read_errors_total", "NVML reads that failed, by field (unsupported fields are not errors).", "field")
	c.util = d("utilization_ratio", "Fraction of the last sample period in which a kernel ran.")
	c.memUtil = d("memory_utilization_ratio", "Fraction of the last sample period in which device memory was read or written.")
	c.memUsed = d("memory_used_bytes", "Device memory in use.")
	c.memFree = d("memory_free_bytes", "Device memory free.")
	c.memTotal = d("memory_total_bytes", "Device memory in all.")
	c.temp = d("temperature_celsius", "GPU die temperature.")
	c.power = d("power_watts", "Power draw.")
	c.powerLimit = d("power_limit_watts", "Enforced power limit.")
	c.smClock = d("sm_clock_hertz", "Current SM clock.")
	c.memClock = d("memory_clock_hertz", "Current memory clock.")
	c.energy = d("energy_joules_total", "Energy used since the driver loaded, from the background sample.")
	c.throttle = d("throttle_reason", "1 while the clocks are held down for this reason.", "reason")
	c.ecc = d("ecc_uncorrected_errors_total", "Uncorrected ECC errors since the driver loaded (volatile counter).")
	c.pcie = d("pcie_throughput_bytes_per_second", "PCIe throughput from the background sample.", "direction")
	c.processes = d("compute_processes", "Compute processes running on the GPU.")
}

// Describe sends every description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.upDesc, c.scrapeDuration, c.sampleAge, c.readErrors, c.util, c.memUtil,
		c.memUsed, c.memFree, c.memTotal, c.temp, c.power, c.powerLimit, c.smClock, c.memClock, c.energy,
		c.throttle, c.ecc, c.pcie, c.processes} {
		ch <- d
	}
}

// Collect reads the fast fields of every GPU and sends them with the last slow sample.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if !c.up {
		ch <- prometheus.MustNewConstMetric(c.upDesc, prometheus.GaugeValue, 0)
		return
	}
	start := time.Now()
	oldest := time.Time{}
	for _, d := range c.devices {
		l := []string{strconv.Itoa(d.Index), d.UUID, d.Name}
		c.collectFast(ch, d, l)
		if taken, ok := c.collectSlow(ch, d, l); ok && (oldest.IsZero() || taken.Before(oldest)) {
			oldest = taken
		}
	}
	gauge(ch, c.upDesc, 1)
	if !oldest.IsZero() {
		gauge(ch, c.sampleAge, c.opts.Now().Sub(oldest).Seconds())
	}
	c.errMu.Lock()
	for field, n := range c.errors {
		ch <- prometheus.MustNewConstMetric(c.readErrors, prometheus.CounterValue, n, field)
	}
	c.errMu.Unlock()
	gauge(ch, c.scrapeDuration, time.Since(start).Seconds())
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// collectFast reads one device's fields that take microseconds, on the scrape path.
func (c *Collector) collectFast(ch chan<- prometheus.Metric, d Device, l []string) {
	h := d.nvml
	if u, ret := h.GetUtilizationRates(); c.ok("utilization", ret) {
		gauge(ch, c.util, float64(u.Gpu)/100, l...)
		gauge(ch, c.memUtil, float64(u.Memory)/100, l...)
	}
	if used, free, total, ok := c.memoryInfo(h); ok {
		gauge(ch, c.memUsed, float64(used), l...)
		gauge(ch, c.memFree, float64(free), l...)
		gauge(ch, c.memTotal, float64(total), l...)
	}
	if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); c.ok("temperature", ret) {
		gauge(ch, c.temp, float64(t), l...)
	}
	if p, ret := h.GetPowerUsage(); c.ok("power", ret) {
		gauge(ch, c.power, float64(p)/1000, l...)
	}
	if p, ret := h.GetEnforcedPowerLimit(); c.ok("power_limit", ret) {
		gauge(ch, c.powerLimit, float64(p)/1000, l...)
	}
	if f, ret := h.GetClockInfo(nvml.CLOCK_SM); c.ok("sm_clock", ret) {
		gauge(ch, c.smClock, float64(f)*1e6, l...)
	}
	if f, ret := h.GetClockInfo(nvml.CLOCK_MEM); c.ok("memory_clock", ret) {
		gauge(ch, c.memClock, float64(f)*1e6, l...)
	}
	if reasons, ok := c.clockEventReasons(h); ok {
		for _, r := range throttleReasons {
			v := 0.0
			if reasons&r.bit != 0 {
				v = 1
			}
			gauge(ch, c.throttle, v, append(l, r.label)...)
		}
	}
	if n, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); c.ok("ecc", ret) {
		ch <- prometheus.MustNewConstMetric(c.ecc, prometheus.CounterValue, float64(n), l...)
	}
	if procs, ret := h.GetComputeRunningProcesses(); c.ok("compute_processes", ret) {
		gauge(ch, c.processes, float64(len(procs)), l...)
	}
}

// collectSlow sends one device's fields from the background sampler, and when they were taken.
func (c *Collector) collectSlow(ch chan<- prometheus.Metric, d Device, l []string) (time.Time, bool) {
	c.mu.Lock()
	s := c.slow[d.UUID]
	c.mu.Unlock()
	if s.hasEnergy {
		ch <- prometheus.MustNewConstMetric(c.energy, prometheus.CounterValue, s.energyJoules, l...)
	}
	if s.hasPCIe {
		gauge(ch, c.pcie, s.pcieTx, append(l, "tx")...)
		gauge(ch, c.pcie, s.pcieRx, append(l, "rx")...)
	}
	return s.takenAt, s.hasAnySlowSample
}

// memoryInfo reads device memory, through the older call on drivers that lack the newer one.
func (c *Collector) memoryInfo(h nvml.Device) (used, free, total uint64, ok bool) {
	if m, ret := h.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
		return m.Used, m.Free, m.Total, true
	}
	m, ret := h.GetMemoryInfo()
	return m.Used, m.Free, m.Total, c.ok("memory", ret)
}

// clockEventReasons reads the clock event (throttle) reasons, through the older call on drivers
// that lack the newer one.
func (c *Collector) clockEventReasons(h nvml.Device) (uint64, bool) {
	r, ret := h.GetCurrentClocksEventReasons()
	if ret == nvml.SUCCESS {
		return r, true
	}
	if !errors.Is(ret, nvml.ERROR_FUNCTION_NOT_FOUND) && !errors.Is(ret, nvml.ERROR_NOT_SUPPORTED) {
		c.ok("throttle_reasons", ret)
		return 0, false
	}
	r, ret = h.GetCurrentClocksThrottleReasons()
	return r, c.ok("throttle_reasons", ret)
}
