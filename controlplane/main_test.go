package controlplane

import (
	"os"
	"testing"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// TestMain lets the test binary serve as a NATS node of
// natstest.StartProcessCluster.
func TestMain(m *testing.M) {
	natstest.RunNodeIfAsked()
	os.Exit(m.Run())
}
