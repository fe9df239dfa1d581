package slurm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestExpand(t *testing.T) {
	tests := []struct {
		name string
		expr string
		want []string
	}{
		{"single", "node1", []string{"node1"}},
		{"comma list", "a,b,c", []string{"a", "b", "c"}},
		{"whitespace list", "a b\tc", []string{"a", "b", "c"}},
		{"empty elements skipped", ",a,,b,", []string{"a", "b"}},
		{"duplicates kept", "a,a", []string{"a", "a"}},
		{"minicluster: ranges and lists", "gpu[001-003,010],login[1-2]",
			[]string{"gpu001", "gpu002", "gpu003", "gpu010", "login1", "login2"}},
		{"minicluster: cartesian with dash", "c[1-2]-ib[3-4]",
			[]string{"c1-ib3", "c1-ib4", "c2-ib3", "c2-ib4"}},
		{"minicluster: width grows", "node[998-1002]",
			[]string{"node998", "node999", "node1000", "node1001", "node1002"}},
		{"minicluster: padding kept", "a[09-11]", []string{"a09", "a10", "a11"}},
		{"padding from low bound only", "node[1-010]",
			[]string{"node1", "node2", "node3", "node4", "node5", "node6", "node7", "node8", "node9", "node10"}},
		{"padding wider than high", "n[007-9]", []string{"n007", "n008", "n009"}},
		{"single number in brackets", "n[5]", []string{"n5"}},
		{"zero", "n[0-0]", []string{"n0"}},
		{"no prefix", "[1-3]", []string{"1", "2", "3"}},
		{"adjacent groups", "n[1-2][3-4]", []string{"n13", "n14", "n23", "n24"}},
		{"suffix after group", "n[1-2]-[3]", []string{"n1-3", "n2-3"}},
		{"three groups rightmost fastest", "r[1-2]-n[1-2]-x[5]",
			[]string{"r1-n1-x5", "r1-n2-x5", "r2-n1-x5", "r2-n2-x5"}},
		{"mixed padded lists", "n[01-3],n[1-2]", []string{"n01", "n02", "n03", "n1", "n2"}},
		{"dashes in names", "gpu-a100-[1-2]", []string{"gpu-a100-1", "gpu-a100-2"}},
		{"empty expression", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExpandHostlist(tt.expr)
			require.NoError(t, err)
			assert.Equal(t, tt.want, emptyToNil(got))
		})
	}
}

func emptyToNil(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func TestExpandErrors(t *testing.T) {
	tests := []struct {
		name    string
		expr    string
		mention string
	}{
		{"backwards range", "node[3-1]", `"3-1"`},
		{"letters", "node[a-c]", `"a-c"`},
		{"empty brackets", "node[]", "empty brackets"},
		{"unclosed", "node[1-3", "unclosed"},
		{"unopened", "node1-3]", "without '['"},
		{"nested", "n[[1]]", "nested"},
		{"empty range part", "n[1,,2]", `""`},
		{"open high bound", "n[1-]", `"1-"`},
		{"open low bound", "n[-2]", `"-2"`},
		{"whitespace in brackets", "n[1 -3]", "whitespace"},
		{"too many hosts", "n[1-99999999]", "more than"},
		{"too many by product", "a[1-4096]b[1-4096]", "more than"},
		{"overflow", "n[1-99999999999999999999999]", "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ExpandHostlist(tt.expr)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrHostlist))
			assert.Contains(t, err.Error(), tt.mention)
		})
	}
}

// TestExpandLarge checks that 100,000 hosts expand well under a second.
func TestExpandLarge(t *testing.T) {
	start := time.Now()
	hosts, err := ExpandHostlist("node[000001-050000],gpu[1-50000]")
	elapsed := time.Since(start)
	require.NoError(t, err)
	require.Len(t, hosts, 100000)
	assert.Equal(t, "node000001", hosts[0])
	assert.Equal(t, "gpu50000", hosts[99999])
	assert.Less(t, elapsed, 500*time.Millisecond)
}

func BenchmarkExpand100k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if _, err := ExpandHostlist("node[000001-100000]"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAgreesWithScontrol compares against the real `scontrol show hostnames` when it is installed.
func TestAgreesWithScontrol(t *testing.T) {
	scontrol, err := exec.LookPath("scontrol")
	if err != nil {
		t.Skip("scontrol not installed")
	}
	conf := filepath.Join(t.TempDir(), "slurm.conf")
	require.NoError(t, os.WriteFile(conf, []byte("ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n"), 0o644))
	for _, expr := range []string{
		"gpu[001-003,010],login[1-2]", "c[1-2]-ib[3-4]", "node[998-1002]", "a[09-11]",
		"node[1-010]", "n[1-2][3-4]", "a,,b", "[1-3]", "n[1-2]-[3]", "n[01-3],n[1-2]",
	} {
		t.Run(expr, func(t *testing.T) {
			cmd := exec.Command(scontrol, "show", "hostnames", expr)
			cmd.Env = append(os.Environ(), "SLURM_CONF="+conf)
			out, err := cmd.Output()
			require.NoError(t, err)
			got, err := ExpandHostlist(expr)
			require.NoError(t, err)
			assert.Equal(t, strings.Fields(string(out)), got)
		})
	}
	for _, expr := range []string{"node[3-1]", "node[a-c]", "node[]"} {
		t.Run(expr, func(t *testing.T) {
			cmd := exec.Command(scontrol, "show", "hostnames", expr)
			cmd.Env = append(os.Environ(), "SLURM_CONF="+conf)
			out, _ := cmd.CombinedOutput()
			require.Contains(t, string(out), "Invalid hostlist", "scontrol rejects it")
			_, err := ExpandHostlist(expr)
			assert.Error(t, err)
		})
	}
}

func FuzzExpand(f *testing.F) {
	for _, seed := range []string{
		"gpu[001-003,010],login[1-2]", "c[1-2]-ib[3-4]", "node[998-1002]", "a[09-11]",
		"node[3-1]", "node[a-c]", "node[]", "n[1-2", "a]", "a, b", "[0-9][0-9]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		hosts, err := ExpandHostlist(expr)
		if err != nil {
			if !errors.Is(err, ErrHostlist) {
				t.Fatalf("error does not wrap ErrHostlist: %v", err)
			}
			return
		}
		if len(hosts) > MaxHostlistHosts {
			t.Fatalf("%d hosts exceeds MaxHostlistHosts", len(hosts))
		}
		for _, h := range hosts {
			if h == "" || strings.ContainsAny(h, "[], \t\n") {
				t.Fatalf("ExpandHostlist(%q) produced bad host %q", expr, h)
			}
			again, err := ExpandHostlist(h)
			if err != nil || len(again) != 1 || again[0] != h {
				t.Fatalf("host %q from %q does not expand to itself: %v %v", h, expr, again, err)
			}
		}
		if !strings.ContainsAny(expr, "[]") {
			want := strings.FieldsFunc(expr, func(r rune) bool { return strings.ContainsRune(", \t\n", r) })
			if fmt.Sprint(want) != fmt.Sprint(hosts) && !(len(want) == 0 && len(hosts) == 0) {
				t.Fatalf("plain list %q gave %v, want %v", expr, hosts, want)
			}
		}
	})
}
