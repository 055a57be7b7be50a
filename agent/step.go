package agent

import "time"

// ownerState is what the decisions about one kernel carry from one event
// to the next. step reads it and returns the next; it holds no lock and
// does no I/O.
type ownerState struct {
	// held is what the kernel holds; nil: unknown until the first (full)
	// re-seed.
	held map[string]Held
	// owed is a restart decided and not done yet.
	owed *owedRestart
	// gaveUp is the generation of the change a restart was given up for
	// (busy, or the mechanism failed): that change is re-seeded instead.
	gaveUp uint64
	// lastRestart is when the agent's last restart of the kernel began
	// (zero: never), from the owner's history: the window runs from it.
	// An input only.
	lastRestart time.Time
}

// eventKind is what happened to a kernel.
type eventKind int

const (
	// evLook: the values changed, a timer fired, or a step asked to look
	// again. d, mode and splay are set.
	evLook eventKind = iota
	// evReseeded: plan was applied for d.
	evReseeded
	// evReseedFailed: plan for d failed; busy is the kernel's state.
	evReseedFailed
	// evBusyOver: the wait for a busy kernel to become idle before an owed
	// restart ended; idle says whether it did.
	evBusyOver
	// evRestartFailed: the owed restart was not done (the mechanism
	// failed); the change of d is re-seeded instead.
	evRestartFailed
	// evRestarted: the owed restart was done.
	evRestarted
)

// event is one input of step.
type event struct {
	kind  eventKind
	d     *Desired
	mode  Mode
	plan  Plan          // evReseeded, evReseedFailed
	busy  bool          // evReseedFailed
	idle  bool          // evBusyOver
	splay time.Duration // drawn for a restart decided on this event, in [0, Policy.Splay)
}

// actKind is what the worker does next.
type actKind int

const (
	// actWait: nothing to do until the next event; with a non-zero due, the
	// worker looks again at due (an owed restart's time).
	actWait actKind = iota
	// actLook: look again at once (evLook with a fresh snapshot).
	actLook
	// actReseed: apply plan.
	actReseed
	// actRestart: do the owed restart (the worker first waits for a busy
	// kernel, then reports evBusyOver).
	actRestart
	// actRestartNow: do the owed restart without waiting any longer.
	actRestartNow
	// actReconnect: drop the session and connect again, backing off.
	actReconnect
)

func (k actKind) String() string {
	return [...]string{"wait", "look", "reseed", "restart", "restart-now", "reconnect"}[k]
}

// action is step's answer: what to do, and what was decided on the way
// (for the log: names and reasons only).
type action struct {
	kind actKind
	plan Plan      // actReseed
	due  time.Time // actWait: when to look again; zero: on the next change
	// What changed about the owed restart, for the log.
	decided *owedRestart // a restart was decided
	undone  *owedRestart // dropped: the values are back to what the kernel holds
	gaveUp  *owedRestart // dropped: busy after the wait (BusyGiveUp), or the mechanism failed
	forced  bool         // busy after the wait, restarting anyway (BusyRestart)
}

// step decides what to do about one kernel on an event, at now, under pol.
// It is pure: the same inputs give the same action and state. The
// decisions it combines are those of policy.go (decide, afterReseedError,
// restartDue, restartAfterBusyWait).
func step(pol Policy, s ownerState, ev event, now time.Time) (action, ownerState) {
	switch ev.kind {
	case evReseeded:
		s.held = holdings(ev.d)
		return action{kind: actWait}, s
	case evReseedFailed:
		if dec := afterReseedError(pol, ev.mode, ev.plan, ev.busy); dec.do == doRestart && ev.d.Gen != s.gaveUp {
			s.owed = owe(pol, dec, ev.plan, s.held, now, s.lastRestart, ev.splay)
			return action{kind: actLook, decided: s.owed}, s
		}
		return action{kind: actReconnect}, s
	case evBusyOver:
		o := s.owed
		if o == nil {
			return action{kind: actLook}, s
		}
		if !restartAfterBusyWait(pol, ev.idle) {
			s.owed, s.gaveUp = nil, ev.d.Gen
			return action{kind: actLook, gaveUp: o}, s
		}
		return action{kind: actRestartNow, forced: !ev.idle}, s
	case evRestartFailed:
		o := s.owed
		s.owed, s.gaveUp = nil, ev.d.Gen
		return action{kind: actLook, gaveUp: o}, s
	case evRestarted:
		s.owed = nil
		return action{kind: actWait}, s
	}
	// evLook
	var a action
	p := plan(s.held, ev.d)
	if o := s.owed; o != nil && o.base != nil && plan(o.base, ev.d).Empty() {
		a.undone, s.owed = o, nil
	}
	if s.owed == nil && ev.d.Gen != s.gaveUp {
		if dec := decide(pol, ev.mode, p); dec.do == doRestart {
			s.owed = owe(pol, dec, p, s.held, now, s.lastRestart, ev.splay)
			a.decided = s.owed
		}
	}
	switch o := s.owed; {
	case o != nil && o.due.After(now):
		a.kind, a.due = actWait, o.due
	case o != nil:
		a.kind = actRestart
	case ev.mode != ModeNone && !p.Empty():
		a.kind, a.plan = actReseed, p
	default:
		a.kind = actWait
	}
	return a, s
}

// owe is a restart decided at now for plan p of a kernel holding held: due
// after the kernel's window since its last restart, and the splay.
func owe(pol Policy, dec decision, p Plan, held map[string]Held, now, last time.Time, splay time.Duration) *owedRestart {
	set, unset := changedNames(p)
	return &owedRestart{reason: dec.reason, set: set, unset: unset, base: held, decided: now,
		due: restartDue(pol, now, last, splay)}
}
