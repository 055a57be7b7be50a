package agent

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
)

// TestNoGoroutineLeakAcrossKernelRestarts: a kernel that restarts again and
// again, then goes away, leaves no goroutine of its sessions behind.
func TestNoGoroutineLeakAcrossKernelRestarts(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	waitFor(t, 10*time.Second, func() error {
		if !a.Status().Loaded {
			return fmt.Errorf("not loaded")
		}
		return nil
	})
	base := runtime.NumGoroutine()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	v := secretValue("leak")
	h.put("s1", "LEAK", 1, v)
	since := time.Now()
	for i := range 4 {
		waitFor(t, 20*time.Second, func() error {
			ks := a.Status().Kernels
			if len(ks) != 1 || ks[0].State != StateLive || ks[0].LastReseed.Before(since) {
				return fmt.Errorf("kernel not re-seeded after restart %d: %+v", i, ks)
			}
			return nil
		})
		since = time.Now()
		k.Restart(t)
	}
	k.Kill()
	if err := os.Remove(k.ConnFile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Fatalf("%d goroutines, %d before the kernel:\n%s", runtime.NumGoroutine(), base, buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
