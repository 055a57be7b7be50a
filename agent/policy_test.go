package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

func TestDecide(t *testing.T) {
	set := Plan{Set: map[string]string{"A": "x"}}
	unset := Plan{Set: map[string]string{}, Unset: []string{"GONE"}}
	rename := Plan{Set: map[string]string{"NEW": "x"}, Unset: []string{"OLD"}}
	full := Plan{Set: map[string]string{"A": "x"}, Full: true}
	empty := Plan{Set: map[string]string{}}
	restart := func(reason string) decision { return decision{do: doRestart, reason: reason} }
	reseed, nothing := decision{do: doReseed}, decision{do: doNothing}
	for _, c := range []struct {
		name string
		pol  Policy
		mode Mode
		p    Plan
		want decision
	}{
		{"zero policy re-seeds", Policy{}, ModeControl, set, reseed},
		{"zero policy, revoke re-seeds", Policy{}, ModeControl, unset, reseed},
		{"zero policy leaves start-only", Policy{}, ModeNone, set, nothing},
		{"nothing changed", Policy{OnChange: ActRestart, OnRevoke: ActRestart}, ModeControl, empty, nothing},
		{"nothing changed, start-only", Policy{OnChange: ActReseedOrRestart}, ModeNone, empty, nothing},
		{"first contact re-seeds, never restarts", Policy{OnChange: ActRestart}, ModeControl, full, reseed},
		{"first contact of start-only: nothing", Policy{OnChange: ActRestart}, ModeNone, full, nothing},
		{"restart on change", Policy{OnChange: ActRestart}, ModeControl, set, restart(reasonChange)},
		{"restart on change, subshell", Policy{OnChange: ActRestart}, ModeSubshell, set, restart(reasonChange)},
		{"restart on change, start-only", Policy{OnChange: ActRestart}, ModeNone, set, restart(reasonChange)},
		{"restart on change covers revokes", Policy{OnChange: ActRestart}, ModeControl, unset, restart(reasonChange)},
		{"revoke restarts", Policy{OnRevoke: ActRestart}, ModeControl, unset, restart(reasonRevoke)},
		{"rename is a revoke", Policy{OnRevoke: ActRestart}, ModeControl, rename, restart(reasonRevoke)},
		{"revoke policy re-seeds a mere change", Policy{OnRevoke: ActRestart}, ModeControl, set, reseed},
		{"revoke policy leaves start-only change", Policy{OnRevoke: ActRestart}, ModeNone, set, nothing},
		{"revoke restarts start-only", Policy{OnRevoke: ActRestart}, ModeNone, unset, restart(reasonRevoke)},
		{"revoke reason wins over change", Policy{OnChange: ActRestart, OnRevoke: ActRestart}, ModeControl, rename, restart(reasonRevoke)},
		{"reseed-or-restart re-seeds live", Policy{OnChange: ActReseedOrRestart}, ModeControl, set, reseed},
		{"reseed-or-restart re-seeds shell-idle", Policy{OnChange: ActReseedOrRestart}, ModeShellIdle, unset, reseed},
		{"reseed-or-restart restarts start-only", Policy{OnChange: ActReseedOrRestart}, ModeNone, set, restart(reasonStartOnly)},
		{"reseed-or-restart restarts start-only revoke", Policy{OnChange: ActReseedOrRestart}, ModeNone, unset, restart(reasonStartOnly)},
	} {
		if got := decide(c.pol, c.mode, c.p); got != c.want {
			t.Errorf("%s: decide = %v %q, want %v %q", c.name, got.do, got.reason, c.want.do, c.want.reason)
		}
	}
}

func TestAfterReseedError(t *testing.T) {
	set := Plan{Set: map[string]string{"A": "x"}}
	full := Plan{Set: map[string]string{"A": "x"}, Full: true}
	ror := Policy{OnChange: ActReseedOrRestart}
	for _, c := range []struct {
		name string
		pol  Policy
		mode Mode
		p    Plan
		busy bool
		want verdict
	}{
		{"reseed policy reconnects", Policy{}, ModeControl, set, false, doNothing},
		{"restart policy reconnects", Policy{OnChange: ActRestart}, ModeControl, set, false, doNothing},
		{"reseed-or-restart restarts", ror, ModeControl, set, false, doRestart},
		{"busy control kernel: control should answer, restart", ror, ModeControl, set, true, doRestart},
		{"not after a first contact", ror, ModeControl, full, false, doNothing},
		{"busy shell-idle kernel: it waits for the cell", ror, ModeShellIdle, set, true, doNothing},
		{"idle shell-idle kernel that fails", ror, ModeShellIdle, set, false, doRestart},
	} {
		got := afterReseedError(c.pol, c.mode, c.p, c.busy)
		if got.do != c.want || (got.do == doRestart && got.reason != reasonReseedFailed) {
			t.Errorf("%s: %v %q, want %v", c.name, got.do, got.reason, c.want)
		}
	}
}

func TestRestartDue(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name  string
		pol   Policy
		last  time.Time
		splay time.Duration
		want  time.Time
	}{
		{"no window, no splay: now", Policy{}, now.Add(-time.Second), 0, now},
		{"never restarted", Policy{MinInterval: time.Minute}, time.Time{}, 0, now},
		{"inside the window: its end", Policy{MinInterval: time.Minute}, now.Add(-10 * time.Second), 0, now.Add(50 * time.Second)},
		{"window over", Policy{MinInterval: time.Minute}, now.Add(-2 * time.Minute), 0, now},
		{"splay", Policy{Splay: time.Minute}, time.Time{}, 7 * time.Second, now.Add(7 * time.Second)},
		{"splay after the window", Policy{MinInterval: time.Minute, Splay: time.Minute}, now.Add(-10 * time.Second), 3 * time.Second, now.Add(53 * time.Second)},
	} {
		if got := restartDue(c.pol, now, c.last, c.splay); !got.Equal(c.want) {
			t.Errorf("%s: due %v, want %v", c.name, got.Sub(now), c.want.Sub(now))
		}
	}
	for range 100 {
		if d := splay(time.Second); d < 0 || d >= time.Second {
			t.Fatalf("splay %v outside [0, 1s)", d)
		}
	}
	if splay(0) != 0 {
		t.Error("splay(0) != 0")
	}
}

func TestRestartAfterBusyWait(t *testing.T) {
	for _, c := range []struct {
		action BusyAction
		idle   bool
		want   bool
	}{
		{"", true, true}, {"", false, true},
		{BusyRestart, true, true}, {BusyRestart, false, true},
		{BusyGiveUp, true, true}, {BusyGiveUp, false, false},
	} {
		if got := restartAfterBusyWait(Policy{BusyAction: c.action}, c.idle); got != c.want {
			t.Errorf("action %q idle %v: %v, want %v", c.action, c.idle, got, c.want)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{{}, {OnChange: ActRestart, OnRevoke: ActRestart, BusyAction: BusyGiveUp, BusyWait: time.Minute,
		Splay: time.Second, MinInterval: time.Minute}, {OnChange: ActReseedOrRestart}} {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	for _, p := range []Policy{{OnChange: "bounce"}, {OnRevoke: ActReseedOrRestart}, {BusyAction: "wait"},
		{Splay: -time.Second}, {MinInterval: -1}, {BusyWait: -1}} {
		if err := p.Validate(); !errors.Is(err, errPolicy) {
			t.Errorf("%+v: err = %v, want a policy error", p, err)
		}
	}
	if (Policy{}).Restarts() || (Policy{OnChange: ActReseed, OnRevoke: ActReseed}).Restarts() {
		t.Error("a re-seed-only policy says it restarts")
	}
	if _, err := ParseChangeAction("restart"); err != nil {
		t.Error(err)
	}
	if _, err := ParseChangeAction("Restart"); err == nil {
		t.Error("ParseChangeAction accepted Restart")
	}
	if _, err := ParseBusyAction("give-up"); err != nil {
		t.Error(err)
	}
}

// fakeRestarter restarts a fake kernel as a kernel manager and the
// injector would: the new process starts with the current values.
type fakeRestarter struct {
	k  *fakeKernel
	st *store
	ks *kernels

	mu      sync.Mutex
	at      []time.Time
	fail    int    // the next n restarts fail
	newPort bool   // the restarted kernel gets new ports: its connection file is rewritten
	during  func() // runs once, inside the next restart, after the file is rewritten
}

func (r *fakeRestarter) String() string { return "fake" }

func (r *fakeRestarter) restart(ctx context.Context, ref kernelRef, sess session) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("server unreachable")
	}
	r.at = append(r.at, time.Now())
	d, _ := r.st.snapshot()
	r.ks.started(ref.ConnectionFile, d) // the injector's GET /v1/env
	r.k.mu.Lock()
	r.k.env = map[string]string{ManagedVar: managedList(d)}
	for n, v := range d.Env {
		r.k.env[n] = string(v.Value)
	}
	r.k.mu.Unlock()
	if r.newPort {
		b := fmt.Sprintf(`{"shell_port": %d, "key": "%s"}`, 1000+len(r.at), ref.ID)
		if err := os.WriteFile(ref.ConnectionFile, []byte(b), 0o600); err != nil {
			return err
		}
	}
	if f := r.during; f != nil {
		r.during = nil
		f()
	}
	return nil
}

func (r *fakeRestarter) times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.at...)
}

// startPolicyKernels serves one fake kernel of mode under pol and returns
// the pieces; the store is loaded (empty) already.
func startPolicyKernels(t *testing.T, pol Policy, mode Mode) (*store, *fakeKernel, *fakeRestarter, *kernels) {
	t.Helper()
	st := newStore(aliceWS)
	st.publish(time.Now())
	k := newFakeKernel()
	dir := t.TempDir()
	ks := &kernels{log: testLogger(t), st: st, dial: k.dialer(mode), probeInterval: time.Hour, applyTimeout: time.Second,
		metrics: &metrics{}, workers: map[string]*worker{}, policy: pol}
	r := &fakeRestarter{k: k, st: st, ks: ks}
	ks.restarter = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ks.run(ctx, []string{dir}, time.Hour) }()
	t.Cleanup(func() { cancel(); <-done })
	f := writeConnFile(t, dir, "k1")
	if mode == ModeNone {
		d, _ := st.snapshot()
		ks.started(f, d)
	}
	waitFor(t, 5*time.Second, func() error {
		s := ks.statuses()
		if len(s) != 1 || (s[0].State != StateLive && s[0].State != StateStartOnly) {
			return fmt.Errorf("kernel not served yet: %+v", s)
		}
		return nil
	})
	return st, k, r, ks
}

func change(t *testing.T, st *store, recs ...*protocol.Secret) {
	t.Helper()
	for _, r := range recs {
		if err := st.apply(r, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	st.publish(time.Now())
}

// wantEnv waits until the fake kernel's variable has want ("" = unset).
func wantEnv(t *testing.T, k *fakeKernel, name, want string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		env, _ := k.snapshot()
		if v, ok := env[name]; v != want || ok != (want != "") {
			return fmt.Errorf("%s not as expected yet", name)
		}
		return nil
	})
}

func liveReseeds(plans []Plan) (n int) {
	for _, p := range plans {
		if !p.Full {
			n++
		}
	}
	return n
}

func TestWorkerRestartOnChange(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart}, ModeControl)
	if n := len(r.times()); n != 0 {
		t.Fatalf("%d restarts on first contact", n)
	}
	change(t, st, put("s1", "API-KEY", 1, alice, "v1"))
	wantEnv(t, k, "API-KEY", "v1")
	waitFor(t, 10*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].State != StateLive || s[0].Restarts != 1 || s[0].LastRestartReason != reasonChange {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	_, plans := k.snapshot()
	if n := liveReseeds(plans); n != 0 {
		t.Errorf("%d live re-seeds under OnChange=restart", n)
	}
	if n := len(r.times()); n != 1 {
		t.Errorf("%d restarts, want 1", n)
	}
	k.mu.Lock()
	dials := k.dials
	k.mu.Unlock()
	if dials < 2 {
		t.Errorf("dials = %d: no reconnect after the restart", dials)
	}
}

func TestWorkerRestartOnRevoke(t *testing.T) {
	st, k, r, _ := startPolicyKernels(t, Policy{OnRevoke: ActRestart}, ModeControl)
	change(t, st, put("s1", "KEEP", 1, alice, "k1"), put("s2", "DROP", 1, alice, "d1"))
	wantEnv(t, k, "DROP", "d1")
	change(t, st, put("s1", "KEEP", 2, alice, "k2")) // a change: re-seeded
	wantEnv(t, k, "KEEP", "k2")
	if n := len(r.times()); n != 0 {
		t.Fatalf("%d restarts for a mere change", n)
	}
	change(t, st, del("s2", "DROP", 2, alice)) // a revoke: restarted
	wantEnv(t, k, "DROP", "")
	waitFor(t, 10*time.Second, func() error {
		if n := len(r.times()); n != 1 {
			return fmt.Errorf("%d restarts", n)
		}
		return nil
	})
	_, plans := k.snapshot()
	for _, p := range plans {
		if len(p.Unset) > 0 {
			t.Errorf("the revoke was re-seeded: %+v", p.Unset)
		}
	}
}

func TestWorkerReseedOrRestart(t *testing.T) {
	pol := Policy{OnChange: ActReseedOrRestart}
	t.Run("start-only kernel restarted", func(t *testing.T) {
		st, k, r, ks := startPolicyKernels(t, pol, ModeNone)
		change(t, st, put("s1", "A", 1, alice, "a1"))
		wantEnv(t, k, "A", "a1")
		if n := len(r.times()); n != 1 {
			t.Errorf("%d restarts", n)
		}
		waitFor(t, 5*time.Second, func() error {
			if s := ks.statuses(); len(s) != 1 || s[0].Holds["A"].Version != 1 || s[0].State != StateStartOnly {
				return fmt.Errorf("status %+v", s)
			}
			return nil
		})
		if _, plans := k.snapshot(); len(plans) != 0 {
			t.Errorf("a start-only kernel got %d re-seeds", len(plans))
		}
	})
	t.Run("live kernel re-seeded", func(t *testing.T) {
		st, k, r, _ := startPolicyKernels(t, pol, ModeControl)
		change(t, st, put("s1", "A", 1, alice, "a1"))
		wantEnv(t, k, "A", "a1")
		if n := len(r.times()); n != 0 {
			t.Errorf("%d restarts of a live kernel", n)
		}
	})
	t.Run("failed re-seed restarts", func(t *testing.T) {
		st, k, r, ks := startPolicyKernels(t, pol, ModeControl)
		k.mu.Lock()
		k.fail = 1
		k.mu.Unlock()
		change(t, st, put("s1", "A", 1, alice, "a1"))
		wantEnv(t, k, "A", "a1")
		waitFor(t, 5*time.Second, func() error {
			if s := ks.statuses(); len(s) != 1 || s[0].LastRestartReason != reasonReseedFailed {
				return fmt.Errorf("status %+v", s)
			}
			return nil
		})
		if n := len(r.times()); n != 1 {
			t.Errorf("%d restarts", n)
		}
	})
}

func TestWorkerRestartWaitsForIdle(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, BusyWait: time.Hour}, ModeControl)
	k.setBusy(true)
	change(t, st, put("s1", "A", 1, alice, "a1"))
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].PendingRestart == nil || !s[0].PendingRestart.WaitingForIdle || !s[0].Busy {
			return fmt.Errorf("not waiting for idle, or not shown busy: %+v", s)
		}
		return nil
	})
	if n := len(r.times()); n != 0 {
		t.Fatalf("restarted a busy kernel")
	}
	k.setBusy(false)
	wantEnv(t, k, "A", "a1")
	if n := len(r.times()); n != 1 {
		t.Errorf("%d restarts", n)
	}
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].Busy {
			return fmt.Errorf("still shown busy: %+v", s)
		}
		return nil
	})
}

func TestWorkerBusyAction(t *testing.T) {
	t.Run("restart anyway", func(t *testing.T) {
		st, k, r, _ := startPolicyKernels(t, Policy{OnChange: ActRestart, BusyWait: 50 * time.Millisecond, BusyAction: BusyRestart}, ModeControl)
		k.setBusy(true)
		change(t, st, put("s1", "A", 1, alice, "a1"))
		wantEnv(t, k, "A", "a1")
		if n := len(r.times()); n != 1 {
			t.Errorf("%d restarts", n)
		}
		_, plans := k.snapshot()
		if n := liveReseeds(plans); n != 0 {
			t.Errorf("%d live re-seeds", n)
		}
	})
	t.Run("give up: re-seeded instead", func(t *testing.T) {
		st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, BusyWait: 50 * time.Millisecond, BusyAction: BusyGiveUp}, ModeControl)
		k.setBusy(true)
		change(t, st, put("s1", "A", 1, alice, "a1"))
		wantEnv(t, k, "A", "a1")
		_, plans := k.snapshot()
		if n := liveReseeds(plans); n != 1 {
			t.Errorf("%d live re-seeds, want 1", n)
		}
		if n := len(r.times()); n != 0 {
			t.Errorf("%d restarts after giving up", n)
		}
		if s := ks.statuses(); len(s) != 1 || s[0].PendingRestart != nil || s[0].Restarts != 0 {
			t.Errorf("status %+v", s)
		}
		// The next change decides again: idle now, restarted.
		k.setBusy(false)
		change(t, st, put("s1", "A", 2, alice, "a2"))
		wantEnv(t, k, "A", "a2")
		waitFor(t, 5*time.Second, func() error {
			if n := len(r.times()); n != 1 {
				return fmt.Errorf("%d restarts", n)
			}
			return nil
		})
	})
}

func TestWorkerRestartWindow(t *testing.T) {
	const window = 1500 * time.Millisecond // wide enough that a loaded machine does not split a burst
	st, k, r, _ := startPolicyKernels(t, Policy{OnChange: ActRestart, MinInterval: window}, ModeControl)
	change(t, st, put("s1", "A", 1, alice, "a1"))
	wantEnv(t, k, "A", "a1")
	// Two changes inside the window: one restart when it ends, with both.
	change(t, st, put("s1", "A", 2, alice, "a2"))
	change(t, st, put("s2", "B", 1, alice, "b1"))
	wantEnv(t, k, "A", "a2")
	wantEnv(t, k, "B", "b1")
	at := r.times()
	if len(at) != 2 {
		t.Fatalf("%d restarts, want 2 (the first, then one for both changes)", len(at))
	}
	if gap := at[1].Sub(at[0]); gap < window {
		t.Errorf("restarts %v apart, window %v", gap, window)
	}
	// A change that is undone inside the window needs no restart.
	change(t, st, put("s3", "C", 1, alice, "c1"))
	change(t, st, del("s3", "C", 2, alice))
	change(t, st, put("s1", "A", 3, alice, "a3")) // and a later one does
	wantEnv(t, k, "A", "a3")
	if n := len(r.times()); n != 3 {
		t.Errorf("%d restarts, want 3", n)
	}
}

func TestWorkerRestartCancelledWhenUndone(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, MinInterval: time.Hour}, ModeControl)
	change(t, st, put("s1", "A", 1, alice, "a1"))
	wantEnv(t, k, "A", "a1")
	change(t, st, put("s2", "B", 1, alice, "b1")) // owed, due in an hour
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].PendingRestart == nil {
			return fmt.Errorf("no pending restart: %+v", s)
		}
		return nil
	})
	change(t, st, del("s2", "B", 2, alice)) // back to what the kernel holds
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].PendingRestart != nil {
			return fmt.Errorf("restart still pending: %+v", s)
		}
		return nil
	})
	if n := len(r.times()); n != 1 {
		t.Errorf("%d restarts", n)
	}
}

func TestWorkerRestartFails(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart}, ModeControl)
	r.mu.Lock()
	r.fail = 1
	r.mu.Unlock()
	change(t, st, put("s1", "A", 1, alice, "a1"))
	wantEnv(t, k, "A", "a1") // re-seeded instead
	if n := len(r.times()); n != 0 {
		t.Errorf("%d restarts", n)
	}
	if s := ks.statuses(); len(s) != 1 || s[0].Restarts != 0 {
		t.Errorf("status %+v", s)
	}
}

// TestShutdownRestarter: without a server the kernel is asked to exit with
// restart set, and the restarter waits for its sockets to close.
func TestShutdownRestarter(t *testing.T) {
	k := newFakeKernel()
	sess := &fakeSession{k: k, mode: ModeControl}
	if err := (shutdownRestarter{}).restart(context.Background(), kernelRef{ID: "k"}, sess); err != nil {
		t.Fatal(err)
	}
	if len(k.shutdowns) != 1 || !k.shutdowns[0] {
		t.Errorf("shutdowns %v, want [true]", k.shutdowns)
	}
	ds := &doneSession{fakeSession: sess, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := (shutdownRestarter{}).restart(ctx, kernelRef{ID: "k"}, ds); err == nil {
		t.Error("no error for a kernel that did not exit")
	}
	close(ds.done)
	if err := (shutdownRestarter{}).restart(context.Background(), kernelRef{ID: "k"}, ds); err != nil {
		t.Error(err)
	}
}

type doneSession struct {
	*fakeSession
	done chan struct{}
}

func (s *doneSession) Done() <-chan struct{} { return s.done }

// TestWorkerRestartNewPorts: a restart that gives the kernel new ports
// rewrites its connection file; a new worker serves it, and the restart
// history (window, count) survives.
func TestWorkerRestartNewPorts(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, MinInterval: 300 * time.Millisecond}, ModeControl)
	r.mu.Lock()
	r.newPort = true
	r.mu.Unlock()
	change(t, st, put("s1", "A", 1, alice, "a1"))
	wantEnv(t, k, "A", "a1")
	change(t, st, put("s1", "A", 2, alice, "a2"))
	wantEnv(t, k, "A", "a2")
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].Restarts != 2 || s[0].State != StateLive {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	at := r.times()
	if len(at) != 2 || at[1].Sub(at[0]) < 300*time.Millisecond {
		t.Errorf("restarts at %v: want 2, a window apart", at)
	}
	k.mu.Lock()
	dials := k.dials
	k.mu.Unlock()
	if dials < 3 {
		t.Errorf("dials = %d: no reconnect to the rewritten connection file", dials)
	}
}

// TestWorkerRestartWindowFromBeginning: the window between restarts runs
// from when a restart began. The worker for the rewritten connection file
// decides its restart while the first restart's call is still running,
// before that restart is counted; its restart is still due a window after
// the first began, not at once.
func TestWorkerRestartWindowFromBeginning(t *testing.T) {
	const window = 300 * time.Millisecond
	st, _, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, MinInterval: window}, ModeControl)
	var due time.Time
	r.mu.Lock()
	r.newPort = true
	r.during = func() {
		change(t, st, put("s1", "A", 2, alice, "a2"))
		waitFor(t, 5*time.Second, func() error { // the new worker (holding v1) owes a restart
			s := ks.statuses()
			if len(s) != 1 || s[0].Holds["A"].Version != 1 || s[0].PendingRestart == nil {
				return fmt.Errorf("the new worker owes no restart yet: %+v", s)
			}
			due = s[0].PendingRestart.Due
			return nil
		})
	}
	r.mu.Unlock()
	change(t, st, put("s1", "A", 1, alice, "a1"))
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].Restarts != 2 || s[0].State != StateLive {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	at := r.times()
	if len(at) != 2 {
		t.Fatalf("restarts at %v, want 2", at)
	}
	if d := due.Sub(at[0]); d < window-50*time.Millisecond {
		t.Errorf("the second restart was due %v after the first began, want the window (%v)", d, window)
	}
	if d := at[1].Sub(at[0]); d < window-50*time.Millisecond {
		t.Errorf("restarts %v apart, want the window (%v)", d, window)
	}
}

// TestWorkerRestartNewPortsChangeDuringRestart: the worker for the
// rewritten connection file connects while the restart call is still
// running, and a change has come meanwhile. The new kernel holds what the
// injector gave it, so the change is a change (another restart), not a
// first contact re-seeded live.
func TestWorkerRestartNewPortsChangeDuringRestart(t *testing.T) {
	st, k, r, ks := startPolicyKernels(t, Policy{OnChange: ActRestart, MinInterval: 300 * time.Millisecond}, ModeControl)
	change(t, st, put("s1", "A", 1, alice, "a1"))
	wantEnv(t, k, "A", "a1") // the first restart: a change on a kernel holding nothing
	r.mu.Lock()
	r.newPort = true
	r.during = func() {
		change(t, st, put("s1", "A", 2, alice, "a2"))
		waitFor(t, 5*time.Second, func() error { // the new worker's first contact
			if s := ks.statuses(); len(s) != 1 || s[0].State != StateLive || s[0].Holds["A"].Version == 0 {
				return fmt.Errorf("the new worker is not live yet: %+v", s)
			}
			return nil
		})
	}
	r.mu.Unlock()
	change(t, st, put("s2", "B", 1, alice, "b1")) // the restart during which it happens
	waitFor(t, 5*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].Restarts != 3 || s[0].State != StateLive || s[0].Reseeds != 0 {
			return fmt.Errorf("want 3 restarts and no re-seed, status %+v", s)
		}
		return nil
	})
	wantEnv(t, k, "A", "a2")
}
