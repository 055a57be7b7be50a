package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// fakeSession records the plans applied to it.
type fakeSession struct {
	k    *fakeKernel
	mode Mode
}

// fakeKernel is a kernel as the fake sessions see it: its environment, the
// plans it received, and knobs to block or fail.
type fakeKernel struct {
	mu      sync.Mutex
	env     map[string]string
	plans   []Plan
	block   chan struct{} // when set, Apply waits for it
	fail    int           // the next n Applies fail
	dials   int
	applied chan struct{}

	// Busy state, for restarts that wait for idle: idle is closed while
	// the kernel is idle. A new fake kernel is idle.
	busy      bool
	idle      chan struct{}
	shutdowns []bool // the restart flag of every Shutdown
}

func newFakeKernel() *fakeKernel {
	idle := make(chan struct{})
	close(idle)
	return &fakeKernel{env: map[string]string{}, applied: make(chan struct{}, 100), idle: idle}
}

// setBusy makes the fake kernel run a cell (true) or end it (false).
func (k *fakeKernel) setBusy(busy bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case busy && !k.busy:
		k.idle = make(chan struct{})
	case !busy && k.busy:
		close(k.idle)
	}
	k.busy = busy
}

func (k *fakeKernel) dialer(mode Mode) dialer {
	return func(ctx context.Context, file string) (session, error) {
		k.mu.Lock()
		defer k.mu.Unlock()
		k.dials++
		return &fakeSession{k: k, mode: mode}, nil
	}
}

func (s *fakeSession) Describe() Description           { return Description{Language: "python", Mode: s.mode} }
func (s *fakeSession) Probe(ctx context.Context) error { return nil }
func (s *fakeSession) Close() error                    { return nil }
func (s *fakeSession) Done() <-chan struct{}           { return nil }
func (s *fakeSession) Shutdown(ctx context.Context, restart bool) error {
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	s.k.shutdowns = append(s.k.shutdowns, restart)
	return nil
}
func (s *fakeSession) Busy() bool {
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	return s.k.busy
}
func (s *fakeSession) WaitIdle(ctx context.Context) error {
	s.k.mu.Lock()
	idle := s.k.idle
	s.k.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (s *fakeSession) Apply(ctx context.Context, p Plan, managed string) error {
	s.k.mu.Lock()
	block := s.k.block
	s.k.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	if s.k.fail > 0 {
		s.k.fail--
		return errors.New("kernel went away")
	}
	// The same semantics as the Python re-seed code.
	if p.Full {
		for _, n := range strings.Split(s.k.env[ManagedVar], ",") {
			if _, keep := p.Set[n]; !keep && n != "" {
				delete(s.k.env, n)
			}
		}
	}
	for _, n := range p.Unset {
		delete(s.k.env, n)
	}
	for n, v := range p.Set {
		s.k.env[n] = v
	}
	s.k.env[ManagedVar] = managed
	s.k.plans = append(s.k.plans, p)
	s.k.applied <- struct{}{}
	return nil
}

func (k *fakeKernel) snapshot() (map[string]string, []Plan) {
	k.mu.Lock()
	defer k.mu.Unlock()
	env := map[string]string{}
	for n, v := range k.env {
		env[n] = v
	}
	return env, append([]Plan(nil), k.plans...)
}

// waitFor polls with a deadline (testutil.WaitFor).
var waitFor = testutil.WaitFor

func startKernels(t *testing.T, st *store, d dialer) (*kernels, string) {
	t.Helper()
	dir := t.TempDir()
	ks := &kernels{log: hclog.NewNullLogger(), st: st, dial: d, probeInterval: time.Hour, applyTimeout: 5 * time.Second,
		metrics: &metrics{}, workers: map[string]*worker{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ks.run(ctx, []string{dir}, time.Hour) }()
	t.Cleanup(func() { cancel(); <-done })
	return ks, dir
}

func writeConnFile(t *testing.T, dir, id string) string {
	t.Helper()
	f := filepath.Join(dir, "kernel-"+id+".json")
	if err := os.WriteFile(f, []byte(`{"shell_port": 1, "key": "`+id+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestWorkerFollowsChanges(t *testing.T) {
	st := newStore(aliceWS)
	k := newFakeKernel()
	k.env = map[string]string{ManagedVar: "GONE", "GONE": "left from an earlier agent", "USERS": "own"}
	_, dir := startKernels(t, st, k.dialer(ModeControl))
	writeConnFile(t, dir, "k1") // found by fsnotify before the records are loaded

	if err := st.apply(put("s1", "API-KEY", 1, alice, "v1"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	<-k.applied
	env, plans := k.snapshot()
	if !plans[0].Full {
		t.Errorf("first re-seed not full: %+v", plans[0])
	}
	want := map[string]string{"API-KEY": "v1", ManagedVar: "API-KEY", "USERS": "own"}
	if !reflect.DeepEqual(env, want) {
		t.Errorf("after first contact env = %v, want %v", env, want)
	}

	// A burst while the kernel is busy applying arrives as one re-seed with
	// the final state.
	k.mu.Lock()
	k.block = make(chan struct{})
	k.mu.Unlock()
	if err := st.apply(put("s1", "API-KEY", 2, alice, "v2"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	for v := uint64(3); v <= 10; v++ {
		// Let the worker be inside Apply for v2 before the burst.
		if v == 3 {
			waitFor(t, 5*time.Second, func() error {
				if st.applied < 2 {
					return errors.New("not applied")
				}
				return nil
			})
		}
		if err := st.apply(put("s1", "API-KEY", v, alice, fmt.Sprintf("v%d", v)), time.Time{}); err != nil {
			t.Fatal(err)
		}
		st.publish(time.Now())
	}
	close(k.block)
	waitFor(t, 5*time.Second, func() error {
		if env, _ := k.snapshot(); env["API-KEY"] != "v10" {
			return errors.New("kernel does not have v10 yet")
		}
		return nil
	})
	if _, plans := k.snapshot(); len(plans) > 3 {
		t.Errorf("%d re-seeds for a burst of 9 changes; want at most 3 (first, in flight, final)", len(plans))
	}
}

func TestWorkerReconnectsAfterFailure(t *testing.T) {
	st := newStore(aliceWS)
	st.publish(time.Now())
	k := newFakeKernel()
	ks, dir := startKernels(t, st, k.dialer(ModeControl))
	f := writeConnFile(t, dir, "k2")
	waitFor(t, 5*time.Second, func() error { // first contact: an empty full re-seed
		if _, p := k.snapshot(); len(p) != 1 {
			return fmt.Errorf("%d re-seeds", len(p))
		}
		return nil
	})
	k.mu.Lock()
	k.fail = 1
	k.mu.Unlock()
	if err := st.apply(put("s1", "TOKEN", 1, projP, "t1"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	waitFor(t, 10*time.Second, func() error {
		env, plans := k.snapshot()
		if env["TOKEN"] != "t1" || !plans[len(plans)-1].Full {
			return fmt.Errorf("not re-seeded fully after the failure: %d plans", len(plans))
		}
		return nil
	})
	if k.dials < 2 {
		t.Errorf("dials = %d, want a reconnect", k.dials)
	}
	st0 := ks.statuses()
	if len(st0) != 1 || st0[0].State != StateLive || st0[0].Holds["TOKEN"] != (Held{"s1", 1}) {
		t.Errorf("status = %+v", st0)
	}
	// The connection file going away forgets the kernel.
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := len(ks.statuses()); n != 0 {
			return fmt.Errorf("%d kernels still known", n)
		}
		return nil
	})
}

func TestStartOnlyKernelGetsNoReseed(t *testing.T) {
	st := newStore(aliceWS)
	st.publish(time.Now())
	k := newFakeKernel()
	ks, dir := startKernels(t, st, k.dialer(ModeNone))
	writeConnFile(t, dir, "r1")
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].State != StateStartOnly {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	if _, p := k.snapshot(); len(p) != 0 {
		t.Errorf("start-only kernel got %d re-seeds", len(p))
	}
}

// TestPythonReseedCode runs the generated code in a plain Python process:
// it sets, unsets, keeps the user's own variables and binds no name.
func TestPythonReseedCode(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	full, err := pythonReseed(Plan{Set: map[string]string{"A": "x'\"\\\n$(echo no)", "B": "ü"}, Full: true}, "A,B")
	if err != nil {
		t.Fatal(err)
	}
	diff, err := pythonReseed(Plan{Set: map[string]string{"B": "b2"}, Unset: []string{"A"}}, "B")
	if err != nil {
		t.Fatal(err)
	}
	prog := strings.Join([]string{
		"import os, json",
		"before = set(globals())",
		full,
		"r1 = {k: os.environ.get(k) for k in ('A', 'B', 'OLD', 'MINE', '" + ManagedVar + "')}",
		diff,
		"r2 = {k: os.environ.get(k) for k in ('A', 'B', 'MINE', '" + ManagedVar + "')}",
		"print(json.dumps([r1, r2, sorted(set(globals()) - before - {'r1', 'r2', 'before'})]))",
	}, "\n")
	cmd := exec.Command(py, "-c", prog)
	cmd.Env = append(os.Environ(), ManagedVar+"=OLD,A", "OLD=stale", "MINE=kept")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := `[{"A": "x'\"\\\n$(echo no)", "B": "\u00fc", "OLD": null, "MINE": "kept", "NBSECRETS_MANAGED": "A,B"}, {"A": null, "B": "b2", "MINE": "kept", "NBSECRETS_MANAGED": "B"}, []]`
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, v := range []string{"x'", "b2"} {
		if strings.Contains(full+diff, v) {
			t.Errorf("value %q appears literally in the code", v)
		}
	}
}

var _ = protocol.OpPut

func TestAPIRefusesOtherUsers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := listen(sock, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.(*uidListener).uid = uint32(os.Getuid()) + 1 // pretend we run as someone else
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("connection from another uid was not closed: n=%d err=%v", n, err)
	}
	l.Close()
	if err := <-accepted; err == nil {
		t.Error("Accept returned the refused connection")
	}
}
