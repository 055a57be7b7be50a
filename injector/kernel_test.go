package injector

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// requireIPykernel skips unless /usr/bin/python3 has ipykernel and
// jupyter_client, or fails when NBSECRETS_REQUIRE_KERNEL=1.
func requireIPykernel(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import ipykernel, jupyter_client").Run(); err != nil {
		if os.Getenv("NBSECRETS_REQUIRE_KERNEL") == "1" {
			t.Fatalf("%s cannot import ipykernel and jupyter_client (%v) and NBSECRETS_REQUIRE_KERNEL=1; run make deps", python, err)
		}
		t.Skipf("%s has no ipykernel or jupyter_client (%v); make deps installs them", python, err)
	}
}

// startKernelScript starts the kernelspec named argv[1] with jupyter_client,
// as Jupyter Server does, runs one cell and prints what the kernel sees and
// the PID the manager holds.
const startKernelScript = `
import json, sys
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client()
try:
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    msg_id = kc.execute("import os, json\nprint(json.dumps({'pid': os.getpid(), 'db': os.environ.get('DB-PASSWORD'), 'old': os.environ.get('OLD-SECRET'), 'managed': os.environ.get('NBSECRETS_MANAGED')}))")
    out = ""
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    res = json.loads(out)
    res["manager_pid"] = km.provisioner.process.pid
    res["connection_file"] = km.connection_file
    print(json.dumps(res))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
`

// TestRealKernel: a real ipykernel started by jupyter_client through the
// installed wrapper has the agent's secret, not the stale one, and the PID
// the manager holds.
func TestRealKernel(t *testing.T) {
	requireIPykernel(t)
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	home := t.TempDir()
	data := filepath.Join(home, "data")
	for k, v := range map[string]string{
		"HOME": home, "JUPYTER_DATA_DIR": data, "JUPYTER_PATH": "", "XDG_DATA_HOME": "",
		"JUPYTER_RUNTIME_DIR": filepath.Join(home, "runtime"), "IPYTHONDIR": filepath.Join(home, "ipython"),
	} {
		t.Setenv(k, v)
	}
	bin, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InstallKernelspec(KernelspecOptions{Name: "python3", Binary: bin, Socket: a.socket}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "-c", startKernelScript, "python3")
	cmd.Env = append(os.Environ(), helperEnv+"=cli", "OLD-SECRET=stale", localapi.ManagedVar+"=OLD-SECRET", "PYDEVD_DISABLE_FILE_VALIDATION=1")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("python: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		PID            int     `json:"pid"`
		ManagerPID     int     `json:"manager_pid"`
		DB             *string `json:"db"`
		Old            *string `json:"old"`
		Managed        string  `json:"managed"`
		ConnectionFile string  `json:"connection_file"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("python said %q: %v", out, err)
	}
	if got.PID == 0 || got.PID != got.ManagerPID {
		t.Errorf("kernel PID %d, manager's PID %d: want the same", got.PID, got.ManagerPID)
	}
	if got.DB == nil || *got.DB != "s3cret-value" || got.Old != nil || got.Managed != "API_KEY,DB-PASSWORD" {
		t.Errorf("kernel env: DB-PASSWORD set %v, OLD-SECRET set %v, NBSECRETS_MANAGED %q", got.DB != nil && *got.DB == "s3cret-value", got.Old != nil, got.Managed)
	}
	_, anns := a.requests()
	if len(anns) != 1 || anns[0].PID != got.PID || anns[0].ConnectionFile != got.ConnectionFile {
		t.Errorf("announcements = %+v, want one for PID %d and %s", anns, got.PID, got.ConnectionFile)
	}
}
