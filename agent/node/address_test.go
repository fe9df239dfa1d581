package node

import (
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tableNet is a fake host network: interfaces, their addresses, and name resolution.
type tableNet struct {
	ifaces map[string][]string // name -> CIDRs, in order
	order  []string
	flags  map[string]net.Flags
	hosts  map[string][]string
}

func (n tableNet) Interfaces() ([]net.Interface, error) {
	var out []net.Interface
	for i, name := range n.order {
		out = append(out, net.Interface{Index: i + 1, Name: name, Flags: n.flags[name]})
	}
	return out, nil
}

func (n tableNet) Addrs(i net.Interface) ([]net.Addr, error) {
	var out []net.Addr
	for _, cidr := range n.ifaces[i.Name] {
		ip, ipn, err := net.ParseCIDR(cidr)
		if err != nil {
			return nil, err
		}
		ipn.IP = ip
		out = append(out, ipn)
	}
	return out, nil
}

func (n tableNet) LookupHost(h string) ([]string, error) {
	if a, ok := n.hosts[h]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestAddress(t *testing.T) {
	up := net.FlagUp
	host := tableNet{
		order:  []string{"lo", "eth0", "ib0", "v6only", "empty"},
		ifaces: map[string][]string{"lo": {"127.0.0.1/8"}, "eth0": {"10.1.0.5/16"}, "ib0": {"fe80::1/64", "192.168.7.5/24"}, "v6only": {"fe80::2/64", "2001:db8::5/64"}},
		flags:  map[string]net.Flags{"lo": up | net.FlagLoopback, "eth0": up, "ib0": up, "v6only": up, "empty": up},
		hosts:  map[string][]string{"gpu01": {"192.168.7.5"}, "loopy": {"127.0.1.1"}},
	}
	tests := []struct {
		name, iface, host, addr, ifname string
	}{
		{"chosen interface", "ib0", "gpu01", "192.168.7.5", "ib0"},
		{"ipv6 only interface", "v6only", "gpu01", "2001:db8::5", "v6only"},
		{"resolved host name", "", "gpu01", "192.168.7.5", "ib0"},
		{"host resolving to loopback falls back to the first real interface", "", "loopy", "10.1.0.5", "eth0"},
		{"unresolvable host falls back too", "", "unknown", "10.1.0.5", "eth0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, ifname, err := Address(host, tt.iface, tt.host)
			require.NoError(t, err)
			assert.Equal(t, tt.addr, addr)
			assert.Equal(t, tt.ifname, ifname)
		})
	}
	_, _, err := Address(host, "ib9", "gpu01")
	assert.ErrorIs(t, err, ErrAddress)
	assert.Contains(t, err.Error(), "this node has lo, eth0, ib0, v6only, empty")
	_, _, err = Address(host, "empty", "gpu01")
	assert.ErrorContains(t, err, "interface empty has no IP address")
	lonely := tableNet{order: []string{"lo"}, ifaces: map[string][]string{"lo": {"127.0.0.1/8"}}, flags: map[string]net.Flags{"lo": up | net.FlagLoopback}}
	_, _, err = Address(lonely, "", "x")
	assert.ErrorContains(t, err, "pass --iface")
	addr, _, err := Address(SystemNet{}, "lo", "")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", addr)
}
