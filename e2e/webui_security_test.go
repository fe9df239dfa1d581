//go:build e2esecurity

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// evilPage is mallory's page, which alice's browser opens while signed in to her job's page
// (PAGE): it frames the page (clickjacking), posts to it from a form and from a script (CSRF,
// with and without a session's cookie), and tries to read its status. It writes what it saw
// into its title. Her own frame (ok.html) shows that frames load at all.
const evilPage = `<!doctype html><html><head><title>waiting</title></head><body>
<iframe id="victim" src="PAGE"></iframe>
<iframe id="control" src="ok.html"></iframe>
<iframe name="sink"></iframe>
<form id="csrf" method="post" action="PAGEapi/chat" enctype="text/plain" target="sink">
<input name='{"model":"m","messages":[{"role":"user","content":"csrf"}],"x":"' value='"}'></form>
<form id="login" method="post" action="PAGEapi/session" enctype="text/plain" target="sink">
<input name='{"key":"sk-llm-mallorys-own","x":"' value='"}'></form>
<script>
(async () => {
  const r = {};
  document.getElementById('csrf').submit();
  document.getElementById('login').submit();
  try {
    const resp = await fetch('PAGEapi/chat', {method: 'POST', credentials: 'include', mode: 'no-cors',
      headers: {'Content-Type': 'text/plain'}, body: '{"model":"m","messages":[{"role":"user","content":"csrf"}]}'});
    r.chat = 'sent (opaque: ' + resp.type + ')';
  } catch (e) { r.chat = 'blocked: ' + e.name; }
  try {
    const resp = await fetch('PAGEapi/status', {credentials: 'include'});
    r.status = 'read: ' + (await resp.text());
  } catch (e) { r.status = 'blocked: ' + e.name; }
  document.title = JSON.stringify(r);
})();
</script></body></html>`

// TestWebPageAttacksFail: mallory attacks alice's web page, from other nodes with curl and
// through alice's own browser, signed in, opening a page of mallory's; once from another node
// (another site) and once from the head node itself (the same site, another port), where
// SameSite cookies alone would not hold. The job's model name and answers are hostile markup.
func TestWebPageAttacksFail(t *testing.T) {
	a := &attacks{t: t}
	defer func() {
		t.Logf("web page attack results:\n%s", a.table())
		if path := os.Getenv("LLM_AGENT_ATTACK_REPORT"); path != "" {
			if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o644); err == nil {
				f.WriteString("\n" + a.table())
				f.Close()
			}
		}
	}()
	j := submit(t, jobSpec{script: "multinode.sbatch", user: owner, sbatch: []string{"-N", "1", "--gpus-per-node=1", "--cpus-per-task=1"},
		agent: []string{"--served-model-name", `<img src=x onerror="window.__xss='model'">`}, env: []string{"FAKEVLLM_ECHO=1"}})
	c := j.waitState(jobfiles.StateReady, readyTimeout)
	key := j.apiKey(c)
	head := nodeNumber(t, c.HeadHost)
	far := head%suite.nodes + 1
	pageURL := strings.TrimSuffix(c.BaseURL, "/v1") + "/ui/"
	chats := func() int { // the chat requests the gateway took, from its audit log
		b, _ := os.ReadFile(filepath.Join(j.stateDir, "audit.jsonl"))
		return strings.Count(string(b), `"endpoint":"/v1/chat/completions"`)
	}

	for _, tc := range []struct{ name, cmd, want string }{
		{"web page: sign in with a guessed key", `curl -s -H 'Content-Type: application/json' -d '{"key":"sk-llm-guess"}' ` + pageURL + "api/session", "not one of this job's keys"},
		{"web page: status without signing in", "curl -s " + pageURL + "api/status", "not signed in"},
		{"web page: a forged session cookie", "curl -s -b llm_agent_ui=" + strings.Repeat("A", 43) + " " + pageURL + "api/status", "not signed in"},
		{"web page: chat without signing in", "curl -s -d '{}' " + pageURL + "api/chat", "not signed in"},
	} {
		out, _ := as(far, attacker, tc.cmd)
		a.record(tc.name, nodeName(far), "refused", out, strings.Contains(out, tc.want) && !strings.Contains(out, j.id))
	}

	ctx := browser(t, chromedp.Flag("disable-site-isolation-trials", true)) // every frame in the tab's frame tree
	// A key pasted into a URL is refused before anything else, and signs nothing in.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(pageURL+"?key="+key)))
	body := js(t, ctx, "document.body.innerText")
	a.record("web page: the key in the URL", "alice's browser", "400, not signed in", body,
		strings.Contains(body, "never goes in a URL") && js(t, ctx, "document.cookie") == "")

	signInPage(t, ctx, pageURL, key)
	waitJS(t, ctx, textOf("state"), "Live", 15*time.Second)
	models := js(t, ctx, textOf("models"))
	a.record("web page: stored XSS through the served model's name", "the job's model", "shown as text, not run",
		models, strings.Contains(models, `<img src=x`) && js(t, ctx, "typeof window.__xss") == "undefined")
	ask(t, ctx, `<img src=x onerror="window.__xss='answer'"> <script>window.__xss='script'</script>`)
	answer := waitJS(t, ctx, lastAnswer, "total", 30*time.Second)
	a.record("web page: reflected XSS through an answer", "the engine's answer", "shown as text, not run", answer,
		strings.Contains(answer, `<img src=x`) && js(t, ctx, "typeof window.__xss") == "undefined" &&
			js(t, ctx, "document.querySelectorAll('#messages img, #messages script').length") == "0")

	require.True(t, assertEventually(10*time.Second, func() bool { return chats() == 1 }),
		"alice's one chat reaches the audit log (it syncs each second): %d", chats())
	for _, n := range []int{far, head} {
		before := chats()
		evil := malloryServes(t, n, strings.ReplaceAll(evilPage, "PAGE", pageURL))
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(evil)))
		title := waitJS(t, ctx, "document.title", "status", 20*time.Second)
		var seen struct{ Chat, Status string }
		require.NoError(t, json.Unmarshal([]byte(title), &seen))
		from := fmt.Sprintf("mallory's page on %s", nodeName(n))
		victim, control := frames(t, ctx)
		a.record("web page: clickjacking (framed by another origin)", from, "the frame refused",
			fmt.Sprintf("victim frame %q (unreachable %q), control frame %q", victim.URL, victim.UnreachableURL, control.URL),
			victim.UnreachableURL != "" && strings.HasSuffix(control.URL, "/ok.html"))
		a.record("web page: read the status from another origin", from, "blocked", seen.Status,
			strings.HasPrefix(seen.Status, "blocked") && !strings.Contains(seen.Status, j.id))
		// The forms and the script's post have been sent (the title is written after them).
		got := assertEventually(3*time.Second, func() bool { return chats() != before })
		a.record("web page: CSRF (forms and a script post chat and sign-in)", from, "no chat taken, mallory not signed in",
			fmt.Sprintf("%d chat requests reached the gateway; script: %s", chats()-before, seen.Chat), !got)
	}
	_, body2 := chat(t, c.BaseURL, key, c.ServedModelName, false)
	require.NotEmpty(t, body2, "alice is still served")
}

// malloryServes serves html as index.html (and a page that may be framed, ok.html) from node n as
// mallory, on a port of her choosing, until the test ends; it returns the page's URL.
func malloryServes(t *testing.T, n int, html string) string {
	t.Helper()
	dir, err := os.MkdirTemp(suite.work, "mallory-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "index.html"), []byte(html), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ok.html"), []byte("<p>mallory's own frame</p>"), 0o644))
	addr := fmt.Sprintf("10.77.0.%d", n)
	port := 18080 + n
	cmd := onNode(n, attacker, fmt.Sprintf("exec python3 -m http.server %d --bind %s --directory %s", port, addr, dir))
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		for _, pid := range pidsByCmdline(t, n, dir) {
			if p, err := strconv.Atoi(pid); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		cmd.Wait()
	})
	url := fmt.Sprintf("http://%s:%d/", addr, port)
	require.True(t, assertEventually(10*time.Second, func() bool {
		resp, err := http.Get(url + "ok.html")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}), "mallory's server never answered on %s", url)
	return url
}

// frames returns mallory's page's frame of alice's page and her control frame.
func frames(t *testing.T, ctx context.Context) (victim, control *cdp.Frame) {
	t.Helper()
	res, err := chromedp.Call(ctx, page.GetFrameTree, cdp.Empty{})
	require.NoError(t, err)
	kids := res.FrameTree.ChildFrames
	require.GreaterOrEqual(t, len(kids), 2, "mallory's page has its frames")
	return kids[0].Frame, kids[1].Frame
}
