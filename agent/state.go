package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// The state file keeps, between runs of an agent, the newest version of
// each secret it has seen: secret ids and versions only, no name, no value.
// A signed record stays valid forever, so whoever could write to the bucket
// could put an older record back; a running agent refuses it (it is not
// newer than what it holds), and with the state file an agent that
// restarts refuses it too.
type stateFile struct {
	Workspace   string            `json:"workspace"`
	ServiceKeys []string          `json:"service_keys"` // the pinned keys the versions were signed with
	Versions    map[string]uint64 `json:"versions"`
}

// stateStore reads and writes one agent's state file.
type stateStore struct {
	path string
	ws   string
	keys []string

	mu    sync.Mutex
	saved map[string]uint64
}

// load returns the versions of an earlier run of this agent: none when the
// file is missing, or is for another workspace, or for keys that share
// nothing with the pinned ones (another deployment).
func (s *stateStore) load() (map[string]uint64, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s is not valid JSON: %w", s.path, err)
	}
	if st.Workspace != s.ws {
		return nil, fmt.Errorf("state file %s is for workspace %q, not %q", s.path, st.Workspace, s.ws)
	}
	shared := false
	for _, k := range st.ServiceKeys {
		shared = shared || slices.Contains(s.keys, k)
	}
	if !shared {
		return nil, fmt.Errorf("state file %s is for other service keys", s.path)
	}
	s.mu.Lock()
	s.saved = st.Versions
	s.mu.Unlock()
	return st.Versions, nil
}

// save writes versions if they differ from what was last written.
func (s *stateStore) save(versions map[string]uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mapsEqual(s.saved, versions) {
		return nil
	}
	b, err := json.Marshal(stateFile{Workspace: s.ws, ServiceKeys: s.keys, Versions: versions})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), "."+filepath.Base(s.path)+".*") // 0600
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("writing state file: %w", err)
	}
	s.saved = versions
	return nil
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
