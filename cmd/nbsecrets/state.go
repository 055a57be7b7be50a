package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

// The state directory of a local instance (nbsecrets dev), mode 0700:
//
//	dev.json        where the running instance listens (devInfo), 0600
//	jetstream/      the embedded server's JetStream store
//	keys/           nkey seeds, 0600 each: service signing and curve keys,
//	                the workspace's curve key, users/<user>.nk
//	agent.sock      the agent's local API (unix socket, 0600)
const (
	devInfoFile   = "dev.json"
	agentSockName = "agent.sock"
)

// devInfo is what a running dev instance publishes in its state dir for the
// other commands. It holds no secret: keys live in keys/.
type devInfo struct {
	PID        int    `json:"pid"`
	NATSURL    string `json:"nats_url"`
	Workspace  string `json:"workspace"`
	User       string `json:"user"`
	Socket     string `json:"socket"`
	SignKey    string `json:"service_sign_key"`  // service's public signing nkey
	SealKey    string `json:"service_curve_key"` // service's public curve key
	RuntimeDir string `json:"runtime_dir"`       // Jupyter runtime dir the agent watches
	UIURL      string `json:"ui_url,omitempty"`  // the web UI; log in with a URL from nbsecrets ui
}

// defaultStateDir is $XDG_STATE_HOME/nbsecrets, else ~/.local/state/nbsecrets.
func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "nbsecrets")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "nbsecrets")
	}
	return filepath.Join(home, ".local", "state", "nbsecrets")
}

// stateDirFlag adds --state-dir to fs.
func stateDirFlag(fs *flag.FlagSet) *string {
	return fs.String("state-dir", defaultStateDir(), "state directory of the local instance")
}

// readDevInfo reads a running instance's dev.json.
func readDevInfo(stateDir string) (*devInfo, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, devInfoFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no nbsecrets instance in %s (start one with 'nbsecrets dev --state-dir %s')", stateDir, stateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("reading instance info: %w", err)
	}
	var info devInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(stateDir, devInfoFile), err)
	}
	return &info, nil
}

// writeFileAtomic writes b to path with mode perm through a temporary file
// and a rename, so readers never see half a file.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	err = errors.Join(err, tmp.Chmod(perm), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}
