package platformtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/browsertest"
)

// ScreenshotsEnv names a directory where the browser tests keep their
// screenshots (for documentation); unset, they go to a temporary dir.
const ScreenshotsEnv = "NBSECRETS_SCREENSHOT_DIR"

// notebookFile: a quiet cell of 6 s that marks its start and end in its
// output, and a cell that prints the secret.
func notebookFile(sleep time.Duration) map[string]any {
	code := func(id, src string) map[string]any {
		return map[string]any{"id": id, "cell_type": "code", "execution_count": nil, "metadata": map[string]any{},
			"outputs": []any{}, "source": src}
	}
	return map[string]any{
		"nbformat": 4, "nbformat_minor": 5,
		"metadata": map[string]any{
			"kernelspec":    map[string]any{"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
			"language_info": map[string]any{"name": "python"},
		},
		"cells": []any{
			code("long", fmt.Sprintf("import time\nprint('cell-start', flush=True)\ntime.sleep(%g)\nprint('cell-end', flush=True)", sleep.Seconds())),
			code("print", fmt.Sprintf("import os\nprint(os.environ[%q])", secretName)),
		},
	}
}

// TestNotebookIndicator opens a notebook in Jupyter Notebook 6 (Debian's
// jupyter-notebook) in Debian's chromium, its kernel started by the
// notebook server through the wrapped kernelspec and served by the agent
// of `nbsecrets dev`. While a 6 s cell runs, the secret changes five
// times; the kernel indicator (#kernel_indicator_icon), sampled every
// 50 ms in the page, must say busy for the whole cell. A cell run after
// the changes prints the last value (the user printing it: this is a test
// value).
func TestNotebookIndicator(t *testing.T) {
	if testing.Short() {
		t.Skip("a browser, a notebook server and a 6 s cell")
	}
	b := browsertest.Require(t)
	d := StartDev(t, Build(t))
	d.Set(t, secretName, "platform-"+RandHex(t))
	j := StartJupyter(t, d, Notebook)
	const cell = 6 * time.Second
	nb, err := json.Marshal(notebookFile(cell))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(j.Root, "platform.ipynb"), nb, 0o600); err != nil {
		t.Fatal(err)
	}

	drv := b.Start(t, browsertest.Options{Script: "testdata/notebook6.js", Timeout: 3 * time.Minute,
		ScreenshotDir: os.Getenv(ScreenshotsEnv),
		Args:          map[string]string{"url": j.URL + "notebooks/platform.ipynb?token=" + j.Token}})
	var k struct{ ID string }
	if err := json.Unmarshal(drv.WaitEvent(t, "kernel", 2*time.Minute), &k); err != nil || k.ID == "" {
		t.Fatalf("the driver's kernel event: %v %+v", err, k)
	}
	d.WaitQuiet(t, k.ID, secretName, 60*time.Second)
	drv.Send(t, "run")

	drv.WaitEvent(t, "cell-started", time.Minute)
	var values []string
	var times []int64
	for i := 0; i < 5; i++ {
		v := "platform-" + RandHex(t)
		if _, err := d.Run(v, "secret", "update", secretName); err != nil {
			t.Fatal(err)
		}
		values, times = append(values, v), append(times, time.Now().UnixMilli())
	}
	d.WaitHeld(t, k.ID, secretName, 30*time.Second)
	var ended struct{ At int64 }
	if err := json.Unmarshal(drv.WaitEvent(t, "cell-ended", time.Minute), &ended); err != nil {
		t.Fatal(err)
	}
	drv.Send(t, "print")
	var res struct {
		Started, Ended int64
		Printed        string
		During         []struct {
			T   int64
			Cls string
		}
	}
	drv.Wait(t, &res)

	inCell := 0
	for _, at := range times {
		if at >= res.Started && at < res.Ended {
			inCell++
		}
	}
	if inCell < 3 {
		t.Errorf("only %d of the 5 changes landed while the cell ran (%d ms): the test proves little", inCell, res.Ended-res.Started)
	}
	if len(res.During) < int(cell/(50*time.Millisecond))/2 {
		t.Errorf("only %d samples of the indicator during the %v cell", len(res.During), cell)
	}
	var wrong []string
	for _, s := range res.During {
		if !strings.Contains(s.Cls, "kernel_busy_icon") {
			wrong = append(wrong, fmt.Sprintf("%.2fs %q", float64(s.T-res.Started)/1000, s.Cls))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("the kernel indicator did not say busy in %d of %d samples while the cell ran: %s",
			len(wrong), len(res.During), strings.Join(first(wrong, 8), ", "))
	}
	if res.Printed != values[len(values)-1] {
		t.Errorf("the cell after the changes printed %q, not the last value", res.Printed)
	}
	out := d.Output()
	for _, v := range values {
		if strings.Contains(out, v) {
			t.Error("a secret value appears in the output of nbsecrets dev")
			break
		}
	}
	if !t.Failed() {
		t.Logf("the indicator said busy in all %d samples of the %.1fs cell; %d changes during it; screenshots in %s",
			len(res.During), float64(res.Ended-res.Started)/1000, inCell, drv.ScreenshotDir)
	}
}
