package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// disk is an audit file on a disk with room bytes left: a write takes what fits and fails with
// ENOSPC for the rest, as write(2) does.
type disk struct {
	got  bytes.Buffer
	room int
	sync int
}

func (d *disk) Write(b []byte) (int, error) {
	n := min(len(b), d.room)
	d.got.Write(b[:n])
	d.room -= n
	if n < len(b) {
		return n, syscall.ENOSPC
	}
	return n, nil
}

func (d *disk) Truncate(size int64) error {
	d.room += d.got.Len() - int(size)
	d.got.Truncate(int(size))
	return nil
}

func (d *disk) Sync() error  { d.sync++; return nil }
func (d *disk) Close() error { return nil }

func records(t *testing.T, b []byte) []Record {
	t.Helper()
	var out []Record
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		var r Record
		require.NoError(t, json.Unmarshal([]byte(line), &r), "a whole JSON line: %q", line)
		out = append(out, r)
	}
	return out
}

// TestAuditSurvivesAFullDisk: the disk fills in the middle of a record; the records wait, the
// failures are counted, and once there is room again the file holds every record, each line
// whole, none twice.
func TestAuditSurvivesAFullDisk(t *testing.T) {
	d := &disk{room: 250} // one record and a part of the next
	a := &Audit{f: d}
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		require.NoError(t, a.Write(Record{Time: at.Add(time.Duration(i) * time.Second), Key: "alice", Endpoint: "/v1/chat/completions", Status: 200}))
	}
	err := a.Sync()
	require.Error(t, err)
	assert.True(t, errors.Is(err, syscall.ENOSPC), "%v", err)
	assert.True(t, bytes.HasSuffix(d.got.Bytes(), []byte("\n")), "the file ends with a whole record while the disk is full: %q", d.got.String())
	assert.Len(t, records(t, d.got.Bytes()), 1, "what fitted, whole")
	st := a.Stats()
	assert.Equal(t, uint64(1), st.Failures)
	assert.Positive(t, st.Pending)
	assert.Zero(t, st.Dropped)
	require.Error(t, a.Sync(), "still full")
	assert.Equal(t, uint64(2), a.Stats().Failures)

	d.room = 1 << 20 // space returns
	require.NoError(t, a.Sync())
	got := records(t, d.got.Bytes())
	require.Len(t, got, 5, "every record, once")
	for i, r := range got {
		assert.Equal(t, at.Add(time.Duration(i)*time.Second), r.Time, "in order")
	}
	assert.Zero(t, a.Stats().Pending)
	assert.Positive(t, d.sync, "what was written is fsynced")
}

// TestAuditDropsOnlyPastItsBound: while the disk is full, the records wait up to the bound;
// past it the oldest whole ones go, each counted.
func TestAuditDropsOnlyPastItsBound(t *testing.T) {
	d := &disk{room: 10} // not even one record fits
	a := &Audit{f: d}
	rec := Record{Key: "alice", Endpoint: "/v1/completions", Error: strings.Repeat("x", maxErrorField)}
	perLine := len(rec.appendJSON(nil))
	n := maxAuditPending/perLine + 50
	for i := range n {
		rec.Status = 100000 + i // every line the same length
		a.Write(rec)
	}
	st := a.Stats()
	assert.LessOrEqual(t, st.Pending, maxAuditPending)
	assert.Positive(t, st.Dropped, "past the bound, counted")
	assert.Positive(t, st.Failures)
	d.room = 1 << 30
	require.NoError(t, a.Sync())
	got := records(t, d.got.Bytes())
	assert.Equal(t, 100000+n-1, got[len(got)-1].Status, "the newest kept")
	assert.Equal(t, uint64(n), uint64(len(got))+st.Dropped, "every record is in the file or counted as dropped")
}

// TestAuditTroublesAreMetrics: the gateway's series count the audit log's failed writes and
// drops, and show what waits.
func TestAuditTroublesAreMetrics(t *testing.T) {
	m := NewMetrics("n1", "9")
	d := &disk{}
	a := &Audit{f: d}
	m.BindAudit(a)
	require.NoError(t, a.Write(Record{Key: "alice", Endpoint: "/v1/completions", Status: 200}))
	require.Error(t, a.Sync())
	want := fmt.Sprintf(`
# HELP llm_agent_gateway_audit_pending_bytes Audit records waiting in memory to be written to the audit log.
# TYPE llm_agent_gateway_audit_pending_bytes gauge
llm_agent_gateway_audit_pending_bytes{job="9",node="n1"} %d
# HELP llm_agent_gateway_audit_write_errors_total Writes and fsyncs of the audit log that failed (a full disk): the records wait in memory and are written once the disk takes them.
# TYPE llm_agent_gateway_audit_write_errors_total counter
llm_agent_gateway_audit_write_errors_total{job="9",node="n1"} 1
`, a.Stats().Pending)
	require.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(want), "llm_agent_gateway_audit_pending_bytes", "llm_agent_gateway_audit_write_errors_total"))
}
