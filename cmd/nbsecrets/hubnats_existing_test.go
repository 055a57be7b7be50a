package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// TestHubNATSExistingServer is issue 11's "an existing NATS": a server
// configured as the README tells a platform team (its own configuration,
// with an account of its own, including inside its accounts and
// authorization blocks the parts `nats-config --hub` wrote from the
// service's state dir), the service connecting with the key from
// that state dir and answering the callout. A registered agent reads its
// records; the platform's own user keeps its password login; a removed
// workspace's agent is cut off when its credentials expire and refused at
// reconnection, while the other agent reconnects and keeps reading.
func TestHubNATSExistingServer(t *testing.T) {
	tmp := t.TempDir()
	stateDir := filepath.Join(tmp, "state")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"nats-config", "--hub", "--state-dir", stateDir, "--accounts-out", filepath.Join(tmp, "nbsecrets-accounts.conf"),
		"--authorization-out", filepath.Join(tmp, "nbsecrets-authorization.conf")}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("nats-config --hub: exit %d: %s", code, stderr.String())
	}
	main := fmt.Sprintf(`host: "127.0.0.1"
port: -1
jetstream {
  store_dir: %q
  limits { default_max_consumers: -1 }
}
accounts {
  platform { users: [{user: "platform-app", password: "platform-pass"}] }
  include "nbsecrets-accounts.conf"
}
authorization {
  include "nbsecrets-authorization.conf"
}
`, filepath.Join(tmp, "store"))
	mainConf := filepath.Join(tmp, "nats.conf")
	if err := os.WriteFile(mainConf, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	url := natstest.StartConfig(t, mainConf).ClientURL()

	logs := &testutil.Buffer{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
	h, svcOpt, err := newHubNATS(stateDir, 2*time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	defer h.stop()
	svcConn, err := nats.Connect(url, svcOpt)
	if err != nil {
		t.Fatalf("the service with its state dir's key: %v", err)
	}
	defer svcConn.Close()
	if err := h.startCallout(svcConn); err != nil {
		t.Fatal(err)
	}
	platform, err := nats.Connect(url, nats.UserInfo("platform-app", "platform-pass"))
	if err != nil {
		t.Fatalf("the platform's own user: %v", err)
	}
	platform.Close()

	sign, _ := nkeys.CreateAccount()
	curve, _ := nkeys.CreateCurveKeys()
	a1, a2 := newHubAgent(t, "alice"), newHubAgent(t, "bob")
	d := &controlplane.Directory{}
	for _, a := range []*hubAgent{a1, a2} {
		k, _ := nkeys.CreateUser()
		p, _ := k.PublicKey()
		d.Users = append(d.Users, controlplane.User{ID: a.ws, PublicKey: p})
		d.Workspaces = append(d.Workspaces, controlplane.Workspace{ID: a.ws, Owner: a.ws, Projects: []string{}, CurveKey: a.curvePub()})
		if err := h.setAgentKey(a.ws, a.natsPub()); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.apply(d); err != nil {
		t.Fatal(err)
	}
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: sign, CurveKey: curve, Directory: d})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatalf("the service under the printed permissions: %v", err)
	}
	defer svc.Stop()
	for _, a := range []*hubAgent{a1, a2} {
		c, _ := svc.As(a.ws)
		if _, err := c.Create(ctx, controlplane.Args{Name: strings.ToUpper(a.ws) + "_TOKEN"}, []byte("value of "+a.ws)); err != nil {
			t.Fatal(err)
		}
		a.run(t, url, sign, curve, log)
		if got := a.holds(); len(got) != 1 || got[strings.ToUpper(a.ws)+"_TOKEN"] == 0 {
			t.Fatalf("agent of %s holds %v", a.ws, got)
		}
	}

	// Alice's server stops. The service cannot close her agent's
	// connection on this server: it ends when the credentials expire, and
	// the reconnection is refused.
	d2 := &controlplane.Directory{Users: d.Users, Workspaces: d.Workspaces[1:]}
	if err := h.apply(d2); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetDirectory(d2); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testutil.WaitFor(t, 30*time.Second, func() error {
		if a1.disconnects.Load() == 0 {
			return errors.New("agent 1 still connected")
		}
		if err := a1.nc.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			return fmt.Errorf("agent 1's reconnection not refused yet (last error: %v)", err)
		}
		return nil
	})
	t.Logf("agent 1 cut off %v after its workspace left (credentials of 2s)", time.Since(start))
	// Bob's agent went through the same expiry and is back, following changes.
	bob, _ := svc.As("bob")
	info, err := bob.Update(ctx, controlplane.Args{Name: "BOB_TOKEN"}, []byte("new value"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, func() error {
		if v := a2.holds()["BOB_TOKEN"]; v != info.Version {
			return fmt.Errorf("agent 2 holds version %d, want %d", v, info.Version)
		}
		if !a2.nc.IsConnected() {
			return errors.New("agent 2 not connected")
		}
		return nil
	})
	t.Logf("agent 2: %d disconnections (credential expiry), %d reconnections", a2.disconnects.Load(), a2.nc.Stats().Reconnects)
}
