//go:build e2e

package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// hostileName is a served model name that would run script if the page ever wrote it as HTML.
const hostileName = `<img src=x onerror="window.__xss='model'">`

// TestWebPage drives the gateway's page in Debian's Chromium against a live two-node job: sign
// in, the job's status and nodes, a streamed answer, the stop button, a killed engine shown as
// restarting and then live again. The served model's name and the answers are hostile markup,
// which the page must show as text.
func TestWebPage(t *testing.T) {
	j := submit(t, jobSpec{script: "multinode.sbatch", sbatch: []string{"-N", "2", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--served-model-name", hostileName, "--backoff-initial", "6s"},
		env:   []string{"FAKEVLLM_TOKEN_DELAY=250ms", "FAKEVLLM_ECHO=1"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	ctx := browser(t)
	signInPage(t, ctx, strings.TrimSuffix(c.BaseURL, "/v1")+"/ui/", j.apiKey(c))
	assert.Empty(t, js(t, ctx, "document.getElementById('key').value"), "the key is not left in the form")

	t.Run("status", func(t *testing.T) {
		waitJS(t, ctx, textOf("state"), "Live", 15*time.Second)
		nodes := waitJS(t, ctx, textOf("nodes"), "node2", 10*time.Second)
		assert.Contains(t, nodes, "node1")
		assert.Contains(t, nodes, "no GPU seen", "the mini-cluster's nodes have no NVML; the page says so")
		assert.Contains(t, js(t, ctx, textOf("job")), j.id)
		assert.Contains(t, js(t, ctx, textOf("models")), hostileName, "the name shown as text")
		assert.Equal(t, "0", js(t, ctx, "document.querySelectorAll('#models img, #model img').length"))
	})

	t.Run("streamed answer", func(t *testing.T) {
		ask(t, ctx, "one two three four five six seven eight")
		lengths := map[int]bool{}
		require.True(t, assertEventually(30*time.Second, func() bool {
			a := js(t, ctx, lastAnswer)
			lengths[len(strings.Fields(a))] = true
			return strings.Contains(a, "total")
		}), "the answer never ended")
		assert.GreaterOrEqual(t, len(lengths), 4, "the answer was shown as it streamed, word by word: %v", lengths)
		final := js(t, ctx, lastAnswer)
		assert.Contains(t, final, "first token")
		assert.Contains(t, final, "8 prompt + 16 completion tokens")
		t.Logf("answer: %q", final)
	})

	t.Run("stop", func(t *testing.T) {
		ask(t, ctx, "alpha beta gamma")
		waitJS(t, ctx, lastAnswer, "gamma", 10*time.Second)
		click(t, ctx, "#stop")
		a := waitJS(t, ctx, lastAnswer, "stopped", 10*time.Second)
		answer, _, _ := strings.Cut(a, "stopped")
		assert.Less(t, len(strings.Fields(answer)), 16, "cut short: %q", a)
	})

	t.Run("hostile answer", func(t *testing.T) {
		ask(t, ctx, `<img src=x onerror="window.__xss='answer'">`)
		a := waitJS(t, ctx, lastAnswer, "total", 30*time.Second)
		assert.Contains(t, a, `<img src=x onerror="window.__xss='answer'">`, "shown as text")
		assert.Equal(t, "0", js(t, ctx, "document.querySelectorAll('#messages img').length"))
	})
	assert.Equal(t, "undefined", js(t, ctx, "typeof window.__xss"), "no markup from the job ran")

	t.Run("engine killed", func(t *testing.T) {
		pids := pidsByComm(t, 1, "fakevllm")
		require.Len(t, pids, 1)
		killed := time.Now()
		pid, err := strconv.Atoi(pids[0])
		require.NoError(t, err)
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		waitJS(t, ctx, textOf("state"), "Restarting", 15*time.Second)
		shown := time.Since(killed)
		waitJS(t, ctx, textOf("state"), "Live", time.Minute)
		assert.Contains(t, js(t, ctx, textOf("facts")), "vllm 1")
		t.Logf("killed engine shown as restarting %s after the kill, live again %s after it",
			shown.Round(100*time.Millisecond), time.Since(killed).Round(100*time.Millisecond))
	})

	click(t, ctx, "#signout")
	require.NoError(t, chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#signin"))))
	require.NoError(t, chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#signin"))), "signed out for good")

	require.NoError(t, exec.Command("scancel", j.id).Run())
	require.NotEqual(t, "FAILED", j.waitEnded(drainBound))
	requireNoProcesses(t, drainBound)
}
