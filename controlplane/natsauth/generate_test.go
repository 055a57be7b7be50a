package natsauth_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
)

func TestGenerateRefuses(t *testing.T) {
	signing := pub(must(nkeys.CreateUser()))
	good := func() natsauth.Config {
		return natsauth.Config{
			Directory: &controlplane.Directory{
				Users:      []controlplane.User{{ID: "alice", PublicKey: signing}},
				Workspaces: []controlplane.Workspace{{ID: "wsa", Owner: "alice", CurveKey: pub(must(nkeys.CreateCurveKeys()))}},
			},
			ServiceKeys: []string{pub(must(nkeys.CreateUser()))},
			AgentKeys:   map[string]string{"wsa": pub(must(nkeys.CreateUser()))},
			UserKeys:    map[string]string{"alice": pub(must(nkeys.CreateUser()))},
		}
	}
	if _, err := natsauth.Generate(good()); err != nil {
		t.Fatalf("good configuration refused: %v", err)
	}
	cases := map[string]func(*natsauth.Config){
		"no directory":          func(c *natsauth.Config) { c.Directory = nil },
		"no service key":        func(c *natsauth.Config) { c.ServiceKeys = nil },
		"workspace without key": func(c *natsauth.Config) { delete(c.AgentKeys, "wsa") },
		"user without key":      func(c *natsauth.Config) { delete(c.UserKeys, "alice") },
		"key of unknown agent":  func(c *natsauth.Config) { c.AgentKeys["wsx"] = pub(must(nkeys.CreateUser())) },
		"key of unknown user":   func(c *natsauth.Config) { c.UserKeys["bob"] = pub(must(nkeys.CreateUser())) },
		"account key":           func(c *natsauth.Config) { c.AgentKeys["wsa"] = pub(must(nkeys.CreateAccount())) },
		"seed instead of key":   func(c *natsauth.Config) { c.ServiceKeys[0] = string(must(must(nkeys.CreateUser()).Seed())) },
		"agent has service key": func(c *natsauth.Config) { c.AgentKeys["wsa"] = c.ServiceKeys[0] },
		"user key is signing":   func(c *natsauth.Config) { c.UserKeys["alice"] = signing },
		"user has agent key":    func(c *natsauth.Config) { c.UserKeys["alice"] = c.AgentKeys["wsa"] },
		"workspace id wildcard": func(c *natsauth.Config) { c.Directory.Workspaces[0].ID = "*"; c.AgentKeys["*"] = c.AgentKeys["wsa"] },
		"workspace listed twice": func(c *natsauth.Config) {
			c.Directory.Workspaces = append(c.Directory.Workspaces, c.Directory.Workspaces[0])
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c := good()
			mutate(&c)
			out, err := natsauth.Generate(c)
			if !errors.Is(err, natsauth.ErrInvalid) {
				t.Fatalf("got %v and %d bytes, want ErrInvalid", err, len(out))
			}
			if bytes.Contains([]byte(err.Error()), []byte("SU")) {
				t.Fatalf("error shows a seed: %v", err)
			}
		})
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	d := newDeployment(t)
	cfg := natsauth.Config{Directory: d.dir, ServiceKeys: []string{pub(d.svcNATS)},
		AgentKeys: map[string]string{}, UserKeys: map[string]string{}}
	for ws, kp := range d.agentNATS {
		cfg.AgentKeys[ws] = pub(kp)
	}
	for u, kp := range d.userNATS {
		cfg.UserKeys[u] = pub(kp)
	}
	for range 5 {
		if out := must(natsauth.Generate(cfg)); !bytes.Equal(out, d.auth) {
			t.Fatalf("output changed between runs:\n%s\n---\n%s", out, d.auth)
		}
	}
}
