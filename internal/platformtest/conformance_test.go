package platformtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// TestConformance runs Jupyter's kernel conformance suite (Debian's
// python3-jupyter-kernel-test) against the python3 kernelspec wrapped by
// `nbsecrets inject`, its kernel served by the agent of `nbsecrets dev`,
// while the secret changes every 400 ms: the suite reads every iopub
// message and checks each answers its own request, so a re-seed or a
// liveness check that showed on iopub would fail it.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("a kernel conformance suite against real kernels")
	}
	requireModule(t, "jupyter_kernel_test", "python3-jupyter-kernel-test")
	d := StartDev(t, Build(t))
	d.Set(t, secretName, "platform-"+RandHex(t))
	served := filepath.Join(t.TempDir(), "served")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kerneltest.PythonPath, "testdata/conformance.py")
	// The suite starts its kernel with jupyter_client's start_new_kernel,
	// which writes the connection file with tempfile.mkstemp: in /tmp, a
	// sticky directory everyone can write. The agent must serve it there
	// (agent/trust.go), as nbclient's and papermill's kernels live there too.
	cmd.Env = slices.DeleteFunc(d.Env(), func(kv string) bool { return strings.HasPrefix(kv, "TMPDIR=") })
	cmd.Env = append(cmd.Env, "NBSECRETS="+d.Bin, "NBSECRETS_STATE_DIR="+d.State,
		"NBSECRETS_TEST_SECRET="+secretName, "NBSECRETS_SERVED_FILE="+served)
	var out testutil.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends when the suite exits (ctx kills it)

	// The changes begin once the agent serves the suite's kernel.
	testutil.WaitFor(t, 90*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the suite ended before the agent served its kernel: %v\n%s", err, out.String())
		default:
		}
		_, err := os.Stat(served)
		return err
	})
	ch := startChanger(t, d, 400*time.Millisecond)
	err := <-exited
	ch.finish()
	if ch.err != nil {
		t.Errorf("changing the secret: %v", ch.err)
	}
	log := out.String()
	if err != nil {
		t.Fatalf("the conformance suite failed (%v) with %d changes during it:\n%s", err, ch.n, log)
	}
	if ch.n < 3 {
		t.Errorf("only %d changes while the suite ran: it proves little", ch.n)
	}
	ran := regexp.MustCompile(`Ran (\d+) tests?`).FindString(log)
	if ran == "" || !strings.Contains(log, "\nOK") {
		t.Errorf("the suite's output does not say it passed:\n%s", log)
	}
	for _, v := range ch.values {
		if strings.Contains(log, v) || strings.Contains(d.Output(), v) {
			t.Fatal("a secret value appears in the suite's output or that of nbsecrets dev")
		}
	}
	t.Logf("%s with %d changes during them:\n%s", ran, ch.n, log)
}
