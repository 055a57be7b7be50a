package jupyterhub_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
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
	return natstest.StartConfig(t, path).ClientURL()
}
