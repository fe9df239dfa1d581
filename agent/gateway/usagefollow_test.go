package gateway

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func auditLine(key string, tokens int) string {
	return fmt.Sprintf(`{"time":"2026-12-07T08:55:01Z","key":%q,"project":"p","endpoint":"/v1/chat/completions","status":200,"prompt_tokens":%d,"completion_tokens":1}`+"\n", key, tokens)
}

// TestAuditFollowerReadsOnlyWhatIsNew: each report equals a whole read of the log as it
// stands (its whole records), while reading only what the log gained.
func TestAuditFollowerReadsOnlyWhatIsNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), AuditFile)
	appendTo := func(s string) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		require.NoError(t, err)
		_, err = f.WriteString(s)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	a := NewAuditFollower(path)
	_, err := a.Report(1, time.Hour, 1)
	require.ErrorContains(t, err, "no audit log")
	check := func(wantRequests int) {
		t.Helper()
		got, err := a.Report(2, time.Hour, 3)
		require.NoError(t, err)
		whole, err := SummarizeFile(path, 2, time.Hour, 3)
		require.NoError(t, err)
		var n int
		for _, r := range got.Keys {
			n += r.Requests
		}
		assert.Equal(t, wantRequests, n)
		assert.Equal(t, whole, got, "the same as reading the whole log")
	}
	appendTo(auditLine("alice", 10) + auditLine("bob", 30) + "not a record\n")
	check(2)
	before := a.offset
	line := auditLine("alice", 5)
	appendTo(line[:20]) // a record half written
	got, err := a.Report(2, time.Hour, 3)
	require.NoError(t, err)
	assert.Equal(t, before, a.offset, "the half-written record waits")
	assert.Len(t, got.Keys, 2)
	appendTo(line[20:])
	check(3)
	assert.Greater(t, a.offset, before)

	// The log replaced (a new job's file at the same path): the count starts again.
	require.NoError(t, os.Remove(path))
	appendTo(auditLine("carol", 1))
	check(1)
}

// BenchmarkPageUsage: one poll of the page's usage on a log of 100,000 records that gained 100
// since the last, read whole again (as llm-agent usage does) or followed.
func BenchmarkPageUsage(b *testing.B) {
	path := filepath.Join(b.TempDir(), AuditFile)
	f, err := os.Create(path)
	require.NoError(b, err)
	for i := range 100000 {
		f.WriteString(auditLine(fmt.Sprintf("key%d", i%20), 9))
	}
	require.NoError(b, f.Close())
	grow := func() {
		f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
		for range 100 {
			f.WriteString(auditLine("alice", 9))
		}
		f.Close()
	}
	b.Run("whole log", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			grow()
			b.StartTimer()
			if _, err := SummarizeFile(path, 8, time.Hour, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("followed", func(b *testing.B) {
		a := NewAuditFollower(path)
		a.Report(8, time.Hour, 1)
		for b.Loop() {
			b.StopTimer()
			grow()
			b.StartTimer()
			if _, err := a.Report(8, time.Hour, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
