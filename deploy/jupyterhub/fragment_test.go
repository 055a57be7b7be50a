package jupyterhub_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nbsecrets/nbsecrets/controlplane/hub"
)

// fragmentProof loads nbsecrets_config.py the way load_subconfig does (on
// a traitlets Config of its own) and calls the NBSECRETS_SERVER_PROOF
// callable it puts in c.Spawner.environment with a spawner of user,
// server and token.
const fragmentProof = `
import json, sys, types
from traitlets.config import Config
c = Config()
ns = {"get_config": lambda: c, "__name__": "nbsecrets_config"}
with open(sys.argv[1]) as f:
    exec(compile(f.read(), sys.argv[1], "exec"), ns)
env = c.Spawner.environment.get_value({})
spawner = types.SimpleNamespace(user=types.SimpleNamespace(name=sys.argv[2]), name=sys.argv[3], api_token=sys.argv[4])
svc = c.JupyterHub.services.get_value([])[0]
print(json.dumps({"proof": env["NBSECRETS_SERVER_PROOF"](spawner),
                  "key_file": svc["environment"]["NBSECRETS_SERVER_PROOF_KEY_FILE"]}))
`

// TestFragmentServerProof: the proof the hub's config fragment gives a
// server is the one the service checks (hub.ServerProof), under the key
// file the fragment makes 0600 and the service is told of; a second load
// (the hub restarting) keeps the key, so running servers stay provable.
func TestFragmentServerProof(t *testing.T) {
	py, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if err := exec.Command(py, "-c", "import traitlets").Run(); err != nil {
		t.Skip("no traitlets")
	}
	state := filepath.Join(t.TempDir(), "state")
	var keyFile string
	for i, c := range []struct{ user, server, token string }{
		{"alice", "", "0123456789abcdef"},
		{"alice", "gpu", "0123456789abcdef"},
		{"bob", "gpu", "fedcba9876543210"},
	} {
		cmd := exec.Command(py, "-c", fragmentProof, "nbsecrets_config.py", c.user, c.server, c.token)
		cmd.Env = append(os.Environ(), "NBSECRETS_STATE_DIR="+state)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("loading the fragment: %v", err)
		}
		var got struct {
			Proof   string `json:"proof"`
			KeyFile string `json:"key_file"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("the fragment's answer %q: %v", out, err)
		}
		if i > 0 && got.KeyFile != keyFile {
			t.Errorf("key file %s, then %s", keyFile, got.KeyFile)
		}
		keyFile = got.KeyFile
		key, err := hub.LoadProofKey(got.KeyFile)
		if err != nil {
			t.Fatalf("the service cannot load the fragment's key: %v", err)
		}
		if want := hub.ServerProof(key, c.user, c.server, c.token); got.Proof != want {
			t.Errorf("user %q server %q: the fragment's proof differs from the service's", c.user, c.server)
		}
	}
	st, err := os.Stat(filepath.Dir(keyFile))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("the keys directory: %v, %v; want 0700", st.Mode(), err)
	}
}
