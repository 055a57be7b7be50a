package agent

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// genOf is a snapshot of generation gen holding name → version of
// secret s-<name> (values made from the version, never logged).
func genOf(gen uint64, vers map[string]uint64) *Desired {
	d := &Desired{Gen: gen, Env: map[string]Var{}}
	for n, v := range vers {
		d.Env[n] = Var{Value: protocol.Value("value-of-" + n), Version: v, SecretID: "s-" + n, Scope: alice}
	}
	return d
}

// TestStep is every decision of the per-kernel layer as a table at a fixed
// now: first contact, change, the window, the splay, an owed restart
// waiting or due, undo, revoke, the busy wait's two outcomes, giving up,
// and re-seeds and restarts that failed or worked.
func TestStep(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d1 := genOf(5, map[string]uint64{"A": 1})
	d2 := genOf(6, map[string]uint64{"A": 2})
	dBack := genOf(8, map[string]uint64{"A": 1})         // d2 undone
	dGone := genOf(7, map[string]uint64{})               // A taken away
	dMore := genOf(9, map[string]uint64{"A": 1, "B": 1}) // B added, A as held
	held1 := holdings(d1)
	restart := Policy{OnChange: ActRestart}
	window := Policy{OnChange: ActRestart, MinInterval: 30 * time.Second}
	owedAt := func(reason string, due time.Time) *owedRestart {
		return &owedRestart{reason: reason, set: []string{"A"}, unset: []string{}, base: held1, decided: now.Add(-time.Minute), due: due}
	}
	type want struct {
		kind                           actKind
		due                            time.Time // of the action
		owed                           string    // reason of the restart owed after; "" none
		owedDue                        time.Time
		gaveUpGen                      uint64
		decided, undone, gaveUp, force bool
		full                           bool // a Full re-seed
	}
	for _, c := range []struct {
		name string
		pol  Policy
		s    ownerState
		ev   event
		want want
	}{
		{"zero policy re-seeds a change", Policy{}, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actReseed}},
		{"nothing changed: wait", restart, ownerState{held: held1},
			event{kind: evLook, d: d1, mode: ModeControl}, want{kind: actWait}},
		{"first contact re-seeds in full, never restarts", restart, ownerState{},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actReseed, full: true}},
		{"restart on change, never restarted: now", restart, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actRestart, owed: reasonChange, owedDue: now, decided: true}},
		{"inside the window: wait for its end", window, ownerState{held: held1, lastRestart: now.Add(-10 * time.Second)},
			event{kind: evLook, d: d2, mode: ModeControl},
			want{kind: actWait, due: now.Add(20 * time.Second), owed: reasonChange, owedDue: now.Add(20 * time.Second), decided: true}},
		{"window over: now", window, ownerState{held: held1, lastRestart: now.Add(-40 * time.Second)},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actRestart, owed: reasonChange, owedDue: now, decided: true}},
		{"splay delays", Policy{OnChange: ActRestart, Splay: 10 * time.Second}, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeControl, splay: 7 * time.Second},
			want{kind: actWait, due: now.Add(7 * time.Second), owed: reasonChange, owedDue: now.Add(7 * time.Second), decided: true}},
		{"splay after the window", Policy{OnChange: ActRestart, Splay: 10 * time.Second, MinInterval: 30 * time.Second},
			ownerState{held: held1, lastRestart: now.Add(-10 * time.Second)},
			event{kind: evLook, d: d2, mode: ModeControl, splay: 7 * time.Second},
			want{kind: actWait, due: now.Add(27 * time.Second), owed: reasonChange, owedDue: now.Add(27 * time.Second), decided: true}},
		{"owed, not due: wait, no second decision", restart, ownerState{held: held1, owed: owedAt(reasonChange, now.Add(time.Second))},
			event{kind: evLook, d: d2, mode: ModeControl},
			want{kind: actWait, due: now.Add(time.Second), owed: reasonChange, owedDue: now.Add(time.Second)}},
		{"owed, due now: restart", restart, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actRestart, owed: reasonChange, owedDue: now}},
		{"a further change joins the owed restart", window, ownerState{held: held1, owed: owedAt(reasonChange, now.Add(time.Second))},
			event{kind: evLook, d: dMore, mode: ModeControl},
			want{kind: actWait, due: now.Add(time.Second), owed: reasonChange, owedDue: now.Add(time.Second)}},
		{"undone before the restart: cancelled", window, ownerState{held: held1, owed: owedAt(reasonChange, now.Add(time.Second))},
			event{kind: evLook, d: dBack, mode: ModeControl}, want{kind: actWait, undone: true}},
		{"revoke restarts", Policy{OnRevoke: ActRestart}, ownerState{held: held1},
			event{kind: evLook, d: dGone, mode: ModeControl}, want{kind: actRestart, owed: reasonRevoke, owedDue: now, decided: true}},
		{"revoke policy re-seeds a mere change", Policy{OnRevoke: ActRestart}, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actReseed}},
		{"given up for this change: re-seeded instead", restart, ownerState{held: held1, gaveUp: 6},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actReseed, gaveUpGen: 6}},
		{"given up for an older change: decides again", restart, ownerState{held: held1, gaveUp: 5},
			event{kind: evLook, d: d2, mode: ModeControl}, want{kind: actRestart, owed: reasonChange, owedDue: now, gaveUpGen: 5, decided: true}},
		{"start-only keeps its values", Policy{OnRevoke: ActRestart}, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeNone}, want{kind: actWait}},
		{"start-only restarts under reseed-or-restart", Policy{OnChange: ActReseedOrRestart}, ownerState{held: held1},
			event{kind: evLook, d: d2, mode: ModeNone}, want{kind: actRestart, owed: reasonStartOnly, owedDue: now, decided: true}},
		{"busy wait: idle in time", Policy{OnChange: ActRestart, BusyAction: BusyGiveUp}, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evBusyOver, d: d2, mode: ModeControl, idle: true}, want{kind: actRestartNow, owed: reasonChange, owedDue: now}},
		{"busy wait: still busy, restart anyway", restart, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evBusyOver, d: d2, mode: ModeControl}, want{kind: actRestartNow, owed: reasonChange, owedDue: now, force: true}},
		{"busy wait: still busy, give up", Policy{OnChange: ActRestart, BusyAction: BusyGiveUp}, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evBusyOver, d: d2, mode: ModeControl}, want{kind: actLook, gaveUpGen: 6, gaveUp: true}},
		{"re-seed failed: restart under reseed-or-restart", Policy{OnChange: ActReseedOrRestart}, ownerState{held: held1},
			event{kind: evReseedFailed, d: d2, mode: ModeControl, plan: plan(held1, d2)},
			want{kind: actLook, owed: reasonReseedFailed, owedDue: now, decided: true}},
		{"re-seed failed: reconnect without a policy", Policy{}, ownerState{held: held1},
			event{kind: evReseedFailed, d: d2, mode: ModeControl, plan: plan(held1, d2)}, want{kind: actReconnect}},
		{"re-seed of a busy shell-idle kernel failed: reconnect", Policy{OnChange: ActReseedOrRestart}, ownerState{held: held1},
			event{kind: evReseedFailed, d: d2, mode: ModeShellIdle, plan: plan(held1, d2), busy: true}, want{kind: actReconnect}},
		{"first contact's re-seed failed: reconnect", Policy{OnChange: ActReseedOrRestart}, ownerState{},
			event{kind: evReseedFailed, d: d2, mode: ModeControl, plan: plan(nil, d2)}, want{kind: actReconnect}},
		{"re-seed failed for a change given up: reconnect", Policy{OnChange: ActReseedOrRestart}, ownerState{held: held1, gaveUp: 6},
			event{kind: evReseedFailed, d: d2, mode: ModeControl, plan: plan(held1, d2)}, want{kind: actReconnect, gaveUpGen: 6}},
		{"restart failed: given up for this change", restart, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evRestartFailed, d: d2, mode: ModeControl}, want{kind: actLook, gaveUpGen: 6, gaveUp: true}},
		{"restarted: nothing owed", restart, ownerState{held: held1, owed: owedAt(reasonChange, now)},
			event{kind: evRestarted, d: d2, mode: ModeControl}, want{kind: actWait}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, s := step(c.pol, c.s, c.ev, now)
			a2, s2 := step(c.pol, c.s, c.ev, now)
			if !reflect.DeepEqual(a, a2) || !reflect.DeepEqual(s, s2) {
				t.Errorf("step is not a function of its inputs: %+v %+v, then %+v %+v", a, s, a2, s2)
			}
			w := c.want
			if a.kind != w.kind || !a.due.Equal(w.due) {
				t.Errorf("action %v due %v, want %v due %v", a.kind, a.due, w.kind, w.due)
			}
			if a.kind == actReseed {
				if want := plan(c.s.held, c.ev.d); !reflect.DeepEqual(a.plan, want) || a.plan.Full != w.full {
					t.Errorf("plan %+v, want %+v (full %v)", a.plan, want, w.full)
				}
			}
			switch {
			case w.owed == "" && s.owed != nil:
				t.Errorf("owed %+v, want none", s.owed)
			case w.owed != "" && s.owed == nil:
				t.Errorf("nothing owed, want a restart for %q", w.owed)
			case w.owed != "" && (s.owed.reason != w.owed || !s.owed.due.Equal(w.owedDue)):
				t.Errorf("owed %q due %v, want %q due %v", s.owed.reason, s.owed.due, w.owed, w.owedDue)
			}
			if s.gaveUp != w.gaveUpGen {
				t.Errorf("given up for gen %d, want %d", s.gaveUp, w.gaveUpGen)
			}
			if (a.decided != nil) != w.decided || (a.undone != nil) != w.undone || (a.gaveUp != nil) != w.gaveUp || a.forced != w.force {
				t.Errorf("decided %v undone %v gave up %v forced %v, want %v %v %v %v",
					a.decided != nil, a.undone != nil, a.gaveUp != nil, a.forced, w.decided, w.undone, w.gaveUp, w.force)
			}
			if a.decided != nil && a.decided != s.owed {
				t.Errorf("the decided restart is not the one owed")
			}
		})
	}
}

// TestStepReseededHolds: after a re-seed the kernel holds the snapshot it
// was re-seeded to, and a look at the same snapshot does nothing.
func TestStepReseededHolds(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d := genOf(3, map[string]uint64{"A": 2, "B": 1})
	a, s := step(Policy{}, ownerState{}, event{kind: evLook, d: d, mode: ModeControl}, now)
	if a.kind != actReseed || !a.plan.Full {
		t.Fatalf("first contact: %v %+v, want a full re-seed", a.kind, a.plan)
	}
	a, s = step(Policy{}, s, event{kind: evReseeded, d: d, mode: ModeControl, plan: a.plan}, now)
	if a.kind != actWait || !reflect.DeepEqual(s.held, holdings(d)) {
		t.Fatalf("after the re-seed: %v, holds %v", a.kind, s.held)
	}
	if a, _ = step(Policy{}, s, event{kind: evLook, d: d, mode: ModeControl}, now); a.kind != actWait {
		t.Fatalf("same snapshot again: %v, want wait", a.kind)
	}
}

// recordingDoer records the restarts asked of it, at the bubble's time.
type recordingDoer struct {
	mu  sync.Mutex
	at  []time.Time
	err error
}

func (r *recordingDoer) reseed(context.Context, Plan, string) error { return errors.New("not used") }
func (r *recordingDoer) close() error                               { return nil }
func (r *recordingDoer) String() string                             { return "recording" }
func (r *recordingDoer) restart(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at = append(r.at, time.Now())
	return r.err
}

// TestRestartBusyWaitInTime runs an owed restart of a busy kernel in a
// synctest bubble: the wait ends exactly at BusyWait (or when the cell
// ends), the restart or the give-up follows as the policy says, and the
// owner's history and decision state record it.
func TestRestartBusyWaitInTime(t *testing.T) {
	const busyWait = 5 * time.Minute
	for _, c := range []struct {
		name      string
		action    BusyAction
		idleAfter time.Duration // 0: the cell never ends
		wantErr   error
		wantAt    time.Duration // when the restart is done; -1: never
	}{
		{"cell ends in time", BusyGiveUp, 2 * time.Minute, errRestarted, 2 * time.Minute},
		{"still busy, restart anyway", BusyRestart, 0, errRestarted, busyWait},
		{"still busy, give up", BusyGiveUp, 0, errGaveUp, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pol := Policy{OnChange: ActRestart, BusyWait: busyWait, BusyAction: c.action}
				ks := &kernels{log: testLogger(t), policy: pol, metrics: &metrics{}, workers: map[string]*worker{}}
				own := &owner{id: "k1"}
				w := &worker{file: "kernel-k1.json", own: own, gen: own.newGeneration(), status: KernelStatus{ID: "k1"}}
				k := newFakeKernel()
				k.setBusy(true)
				sess := &fakeSession{k: k, mode: ModeControl}
				do := &recordingDoer{}
				d1, d2 := genOf(1, map[string]uint64{"A": 1}), genOf(2, map[string]uint64{"A": 2})
				start := time.Now()
				a, st := step(pol, ownerState{held: holdings(d1)}, event{kind: evLook, d: d2, mode: ModeControl}, start)
				if a.kind != actRestart {
					t.Fatalf("step: %v, want restart", a.kind)
				}
				if c.idleAfter > 0 {
					go func() {
						time.Sleep(c.idleAfter)
						k.setBusy(false)
					}()
				}
				err := ks.restartKernel(t.Context(), w, sess, do, &st, d2, ModeControl, ks.log)
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("restartKernel: %v, want %v", err, c.wantErr)
				}
				synctest.Wait()
				do.mu.Lock()
				at := do.at
				do.mu.Unlock()
				var r KernelStatus
				own.restartStatus(&r)
				if c.wantAt < 0 {
					if len(at) != 0 || r.Restarts != 0 {
						t.Fatalf("restarted at %v (%d counted), want no restart", at, r.Restarts)
					}
					if st.owed != nil || st.gaveUp != d2.Gen {
						t.Fatalf("after giving up: owed %+v, given up for %d, want none and %d", st.owed, st.gaveUp, d2.Gen)
					}
					if got := time.Since(start); got != busyWait {
						t.Fatalf("gave up after %v, want exactly %v", got, busyWait)
					}
					return
				}
				if len(at) != 1 || at[0].Sub(start) != c.wantAt {
					t.Fatalf("restarts at %v after start %v, want one at +%v", at, start, c.wantAt)
				}
				if r.Restarts != 1 || r.LastRestartReason != reasonChange || !r.LastRestart.Equal(at[0]) {
					t.Fatalf("history %+v, want one restart for %q at %v", r, reasonChange, at[0])
				}
				if st.owed != nil || own.state(w.gen).owed != nil {
					t.Fatalf("restart still owed after it was done")
				}
				if got := own.lastRestartAt(); !got.Equal(at[0]) {
					t.Fatalf("window starts at %v, want %v", got, at[0])
				}
			})
		})
	}
}

// TestOwnerGenerations: a new worker generation starts from nothing known
// and nothing owed, and a replaced generation cannot overwrite its
// successor's state; the history stays across generations.
func TestOwnerGenerations(t *testing.T) {
	o := &owner{id: "k1"}
	g1 := o.newGeneration()
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	o.restartBegins(at)
	o.noteRestart(reasonChange, at)
	o.setState(g1, ownerState{held: map[string]Held{"A": {"s-A", 1}}, owed: &owedRestart{reason: reasonChange}, gaveUp: 3})
	if s := o.state(g1); s.owed == nil || s.gaveUp != 3 || s.held == nil || !s.lastRestart.Equal(at) {
		t.Fatalf("generation 1 reads back %+v", s)
	}
	g2 := o.newGeneration()
	if s := o.state(g2); s.owed != nil || s.held != nil || s.gaveUp != 0 || !s.lastRestart.Equal(at) {
		t.Fatalf("generation 2 starts with %+v, want nothing but the window", s)
	}
	o.setState(g1, ownerState{owed: &owedRestart{reason: reasonRevoke}}) // the replaced worker, late
	if s := o.state(g2); s.owed != nil {
		t.Fatalf("a replaced generation wrote its successor's state: %+v", s.owed)
	}
	var r KernelStatus
	o.restartStatus(&r)
	if r.Restarts != 1 || r.LastRestartReason != reasonChange {
		t.Fatalf("history lost across generations: %+v", r)
	}
}

// TestOwnerPerKernelID: one owner per kernel id, kept while it is new or
// served, pruned once no worker serves it and it was not touched for
// ownerTTL.
func TestOwnerPerKernelID(t *testing.T) {
	ks := &kernels{workers: map[string]*worker{}}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	ks.mu.Lock()
	a := ks.ownerLocked("a", now)
	served := ks.ownerLocked("served", now)
	ks.workers["/run/kernel-served.json"] = &worker{}
	ks.mu.Unlock()
	ks.started("/run/kernel-a.json", genOf(1, map[string]uint64{"A": 1}))
	if at, held := a.startInfo(); at.IsZero() || held == nil {
		t.Fatalf("the injector's start went to another owner than the kernel's")
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if got := ks.ownerLocked("a", now.Add(time.Minute)); got != a {
		t.Fatalf("a second owner for one kernel id")
	}
	later := now.Add(time.Minute + ownerTTL + time.Second)
	ks.ownerLocked("b", later)
	if ks.owners["a"] != nil {
		t.Errorf("an owner unserved and untouched for %v was kept", ownerTTL)
	}
	if ks.owners["served"] != served || ks.owners["b"] == nil {
		t.Errorf("owners after pruning: %v", ks.owners)
	}
}
