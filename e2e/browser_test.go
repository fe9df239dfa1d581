//go:build e2e || e2esecurity

package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// browser starts Debian's headless Chromium for one test and ends it with the test. As root,
// chromedp adds --no-sandbox: Chromium's sandbox will not start there.
func browser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	require.NoError(t, err, "Debian's chromium, installed by .ci/run")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1280, 1000))
	opts = append(opts, extra...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	ctx, cancelRun := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(func() {
		cancelRun()
		cancelTab()
		cancelAlloc() // waits for the browser to exit
	})
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")), "start chromium")
	return ctx
}

// js evaluates expr in the page and returns its value as a string.
func js(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	out, err := chromedp.Run(ctx, chromedp.Evaluate[string](`String(`+expr+`)`))
	require.NoError(t, err, "evaluate %s", expr)
	return out
}

// waitJS waits until the page's expr, as a string, contains want, and returns it.
func waitJS(t *testing.T, ctx context.Context, expr, want string, timeout time.Duration) string {
	t.Helper()
	var last string
	ok := assertEventually(timeout, func() bool {
		last = js(t, ctx, expr)
		return strings.Contains(last, want)
	})
	require.True(t, ok, "the page's %s never held %q; last: %q", expr, want, last)
	return last
}

// textOf is the expression of an element's text, by id.
func textOf(id string) string { return "document.getElementById('" + id + "').textContent" }

// signInPage opens url (the page) and signs in with key, as a person would.
func signInPage(t *testing.T, ctx context.Context, url, key string) {
	t.Helper()
	step, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := chromedp.Do(step,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS("#key")),
		chromedp.SendKeys(chromedp.CSS("#key"), key),
		chromedp.Click(chromedp.CSS("#signin-form button")), // as a person: the form's submit event
		chromedp.WaitVisible(chromedp.CSS("#app")))
	require.NoError(t, err, "sign in at %s; the page said: %s", url, js(t, ctx, "document.body.innerText"))
}

// lastAnswer is the text of the page's last answer, with its line of tokens and latency.
const lastAnswer = `(() => { const a = document.querySelectorAll('.msg.assistant'); return a.length ? a[a.length-1].textContent : '' })()`

// ask types a message into the chat and sends it.
func ask(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitEnabled(chromedp.CSS("#send")),
		chromedp.SetValue(chromedp.CSS("#prompt"), text),
		chromedp.Click(chromedp.CSS("#send"))))
}

// click clicks the element with this CSS selector.
func click(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))))
}
