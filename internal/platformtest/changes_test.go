package platformtest

import (
	"fmt"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// waitPast waits until the agent of d has a version of name past prev, the
// version it had before the test changed name, and returns it. The agent
// learns of a change a moment after `nbsecrets secret update` returns (the
// record reaches it over NATS); a status read before that shows the
// previous version, and WaitHeld or WaitQuiet would find the kernel holding
// that one and return before the change reached the agent at all. So a
// test that changes a value and then checks a kernel waits for this first.
func waitPast(t *testing.T, d *Dev, name string, prev uint64, timeout time.Duration) uint64 {
	t.Helper()
	var v uint64
	testutil.WaitFor(t, timeout, func() error {
		if v = d.Status(t).Version(name); v <= prev {
			return fmt.Errorf("the agent has %s at version %d, not past %d yet", name, v, prev)
		}
		return nil
	})
	return v
}
