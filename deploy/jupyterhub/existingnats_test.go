package jupyterhub_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startExistingNATS is a platform team's NATS server for the hub: the
// binary's `nats-config --hub` run on the service's state dir, included in
// the server's own configuration as the README says, served by nats-server
// 2.15 in the test's process (Debian's 2.9 predates auth callout). It
// returns the URL for $NBSECRETS_NATS_URL; the server stops when the test
// ends.
func startExistingNATS(t *testing.T, bin, stateDir string) string {
	t.Helper()
	dir := t.TempDir()
	auth := filepath.Join(dir, "nbsecrets-auth.conf")
	if out, err := exec.Command(bin, "nats-config", "--hub", "--state-dir", stateDir, "--out", auth).CombinedOutput(); err != nil {
		t.Fatalf("nats-config --hub: %v\n%s", err, out)
	}
	conf := fmt.Sprintf("host: \"127.0.0.1\"\nport: -1\njetstream {\n  store_dir: %q\n  limits { default_max_consumers: -1 }\n}\ninclude \"nbsecrets-auth.conf\"\n",
		filepath.Join(dir, "store"))
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the NATS configuration with nats-config --hub's block: %v", err)
	}
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats-server not ready within 30s")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}
