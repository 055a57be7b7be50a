package agent

import (
	"testing"
	"time"
)

// TestShutdownKernelGoneBeforeReply: a kernel exits on shutdown_request
// right after replying, and the end of its connection can reach the agent
// on shell or iopub before the reply on control (seen under load in
// TestRestartWithoutServer: "shutdown_request: jupyter: connection to
// kernel lost: shell: EOF", the kernel restarted by its manager, and the
// agent counting a failed restart). Here the kernel goes without a reply
// once it has the request: the shutdown did what it asked, and the
// restart mechanism reports success. A kernel already gone before the
// request is still an error: the agent did not stop it.
func TestShutdownKernelGoneBeforeReply(t *testing.T) {
	k, sess, ctx := dialProtoKernel(t, false, false)
	go func() { // owned by the test: ends once the request came or with ctx
		for ctx.Err() == nil {
			if len(k.requests("shutdown_request")) > 0 {
				k.stop() // the kernel exits, its reply never sent
				return
			}
			select {
			case <-k.got:
			case <-time.After(50 * time.Millisecond): // polling, not synchronisation
			}
		}
	}()
	if err := (shutdownRestarter{}).restart(ctx, kernelRef{}, sess); err != nil {
		t.Fatalf("restart by shutdown_request of a kernel that exited on it: %v", err)
	}

	k2, sess2, ctx2 := dialProtoKernel(t, false, false)
	k2.stop()
	select {
	case <-sess2.Done():
	case <-ctx2.Done():
		t.Fatal("the session did not notice its kernel gone")
	}
	if err := sess2.Shutdown(ctx2, true); err == nil {
		t.Error("shutdown_request to a kernel gone before it reported success")
	}
	if n := len(k2.requests("shutdown_request")); n != 0 {
		t.Errorf("the gone kernel got %d shutdown requests", n)
	}
}
