package jupyter_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// A real kernel of this user passes every check of the strictest policy.
func TestDialPolicyAcceptsARealKernel(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	ctx := jupyter.WithDialPolicy(testCtx(t), jupyter.DialPolicy{PeerUID: uint32(os.Geteuid()), IPCDir: filepath.Dir(k.ConnFile)})
	c, err := jupyter.Dial(ctx, k.Info)
	if err != nil {
		t.Fatalf("Dial with a policy: %v", err)
	}
	defer c.Close()
	if _, err := c.KernelInfo(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}
