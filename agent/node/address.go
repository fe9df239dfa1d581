// Package node is the per-node environment every room of the agent reads: what the agent
// found out about its node before anything started (its address for the job's traffic, the
// ports it can bind, free of other jobs'), the checked configuration and plan (Env), and what
// every child process of the node shares: its log file, restart policy, metrics and the
// node's metrics port.
package node

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// ErrAddress is wrapped by errors about the node's network address.
var ErrAddress = errors.New("no usable node address")

// Netinfo is the view of the host's network that NodeAddress needs; tests replace it.
type Netinfo interface {
	Interfaces() ([]net.Interface, error)
	Addrs(iface net.Interface) ([]net.Addr, error)
	LookupHost(host string) ([]string, error)
}

// SystemNet reads the real network configuration.
type SystemNet struct{}

var _ Netinfo = SystemNet{}

// Interfaces lists the host's interfaces.
func (SystemNet) Interfaces() ([]net.Interface, error) { return net.Interfaces() }

// Addrs lists an interface's addresses.
func (SystemNet) Addrs(iface net.Interface) ([]net.Addr, error) { return iface.Addrs() }

// LookupHost resolves a host name.
func (SystemNet) LookupHost(host string) ([]string, error) { return net.LookupHost(host) }

// Address chooses the one address this node uses for Ray, VLLM_HOST_IP, NCCL and Gloo, and
// the interface that holds it. With iface set, it is that interface's first IPv4 address (else
// IPv6); otherwise the address hostname resolves to, or failing that the first address of an
// interface that is up and not loopback.
func Address(n Netinfo, iface, hostname string) (addr, ifname string, err error) {
	ifaces, err := n.Interfaces()
	if err != nil {
		return "", "", fmt.Errorf("%w: list interfaces: %w", ErrAddress, err)
	}
	if iface != "" {
		for _, i := range ifaces {
			if i.Name != iface {
				continue
			}
			ip := firstIP(n, i)
			if ip == "" {
				return "", "", fmt.Errorf("%w: interface %s has no IP address", ErrAddress, iface)
			}
			return ip, iface, nil
		}
		var names []string
		for _, i := range ifaces {
			names = append(names, i.Name)
		}
		return "", "", fmt.Errorf("%w: interface %q not found; this node has %s", ErrAddress, iface, strings.Join(names, ", "))
	}
	if ips, err := n.LookupHost(hostname); err == nil {
		for _, s := range ips {
			ip := net.ParseIP(s)
			if ip == nil || ip.IsLoopback() {
				continue
			}
			if name := interfaceOf(n, ifaces, ip); name != "" {
				return ip.String(), name, nil
			}
		}
	}
	for _, i := range ifaces {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		if ip := firstIP(n, i); ip != "" {
			return ip, i.Name, nil
		}
	}
	return "", "", fmt.Errorf("%w: %q resolves to no address of this node and no interface is up; pass --iface", ErrAddress, hostname)
}

// firstIP returns the interface's first IPv4 address, else its first global IPv6 one.
func firstIP(n Netinfo, i net.Interface) string {
	addrs, err := n.Addrs(i)
	if err != nil {
		return ""
	}
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" && ipn.IP.IsGlobalUnicast() {
			v6 = ipn.IP.String()
		}
	}
	return v6
}

func interfaceOf(n Netinfo, ifaces []net.Interface, ip net.IP) string {
	for _, i := range ifaces {
		addrs, err := n.Addrs(i)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.Equal(ip) {
				return i.Name
			}
		}
	}
	return ""
}
