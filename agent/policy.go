package agent

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// ChangeAction is what the agent does to a kernel whose values changed.
type ChangeAction string

// The change actions.
const (
	// ActReseed re-seeds a live kernel in place; a start-only kernel keeps
	// the values it started with until it restarts for another reason.
	ActReseed ChangeAction = "reseed"
	// ActRestart restarts every kernel whose values changed, live or not:
	// the kernel starts again through the injector with the current values.
	ActRestart ChangeAction = "restart"
	// ActReseedOrRestart re-seeds where it can and restarts a kernel that
	// cannot be re-seeded: a start-only kernel (no live re-seed for its
	// language), or one whose re-seed failed or timed out.
	ActReseedOrRestart ChangeAction = "reseed-or-restart"
)

// BusyAction is what becomes of a restart whose kernel is still running a
// cell when Policy.BusyWait has passed.
type BusyAction string

// The busy actions.
const (
	// BusyRestart restarts the kernel anyway; the running cell is lost.
	BusyRestart BusyAction = "restart"
	// BusyGiveUp skips the restart for this change: a live kernel is
	// re-seeded instead (its environment is current; values already read
	// into variables stay), a start-only kernel keeps its values. The next
	// change decides again.
	BusyGiveUp BusyAction = "give-up"
)

// Policy says when the agent restarts a kernel instead of re-seeding it,
// and how considerately. The zero value never restarts: every change is
// re-seeded live, as the agent does without a policy.
type Policy struct {
	// OnChange applies to every change of the values a kernel holds
	// (values set, changed or removed). Zero: ActReseed.
	OnChange ChangeAction
	// OnRevoke applies, on top of OnChange, to a change that takes a name
	// away from a kernel (a delete, an unshare, a rename): the value may
	// already sit in a variable, and only a restart takes it back.
	// ActReseed or ActRestart. Zero: ActReseed (OnChange alone decides).
	OnRevoke ChangeAction
	// BusyWait is how long a restart waits for a busy kernel (a cell
	// running) to become idle. Zero: no wait, BusyAction at once.
	BusyWait time.Duration
	// BusyAction is what happens to a kernel still busy after BusyWait.
	// Zero: BusyRestart.
	BusyAction BusyAction
	// Splay is the upper bound of a random delay before each restart, so
	// that one change does not restart every kernel at the same instant.
	// Zero: no delay.
	Splay time.Duration
	// MinInterval is the shortest time between two restarts of one kernel;
	// a change inside the window is applied, by one restart with the
	// values current then, when the window ends. Zero: no limit.
	MinInterval time.Duration
}

// Errors of policy values.
var errPolicy = errors.New("agent: invalid policy")

// ParseChangeAction reads an OnChange or OnRevoke value.
func ParseChangeAction(s string) (ChangeAction, error) {
	switch a := ChangeAction(s); a {
	case ActReseed, ActRestart, ActReseedOrRestart:
		return a, nil
	}
	return "", fmt.Errorf("%w: %q is not one of reseed, restart, reseed-or-restart", errPolicy, s)
}

// ParseBusyAction reads a BusyAction value.
func ParseBusyAction(s string) (BusyAction, error) {
	switch a := BusyAction(s); a {
	case BusyRestart, BusyGiveUp:
		return a, nil
	}
	return "", fmt.Errorf("%w: busy action %q is not one of restart, give-up", errPolicy, s)
}

// Validate checks every field.
func (p Policy) Validate() error {
	var errs []error
	switch p.OnChange {
	case "", ActReseed, ActRestart, ActReseedOrRestart:
	default:
		errs = append(errs, fmt.Errorf("%w: on-change %q", errPolicy, p.OnChange))
	}
	switch p.OnRevoke {
	case "", ActReseed, ActRestart:
	default:
		errs = append(errs, fmt.Errorf("%w: on-revoke %q is not one of reseed, restart", errPolicy, p.OnRevoke))
	}
	switch p.BusyAction {
	case "", BusyRestart, BusyGiveUp:
	default:
		errs = append(errs, fmt.Errorf("%w: busy action %q", errPolicy, p.BusyAction))
	}
	for name, d := range map[string]time.Duration{"busy wait": p.BusyWait, "splay": p.Splay, "restart window": p.MinInterval} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%w: negative %s", errPolicy, name))
		}
	}
	return errors.Join(errs...)
}

// Restarts reports whether the policy ever restarts a kernel.
func (p Policy) Restarts() bool {
	return p.OnChange == ActRestart || p.OnChange == ActReseedOrRestart || p.OnRevoke == ActRestart
}

// restartsStartOnly reports whether a start-only kernel is ever restarted,
// and so whether its worker must follow changes at all.
func (p Policy) restartsStartOnly() bool { return p.Restarts() }

// verdict is what to do about a kernel's plan.
type verdict int

const (
	doNothing verdict = iota // the kernel keeps what it holds
	doReseed                 // re-seed it live
	doRestart                // restart it
)

func (v verdict) String() string {
	return [...]string{"nothing", "reseed", "restart"}[v]
}

// Restart reasons, as logs and status give them.
const (
	reasonChange       = "change"         // OnChange=restart
	reasonRevoke       = "revoke"         // OnRevoke=restart and a name was taken away
	reasonStartOnly    = "start-only"     // OnChange=reseed-or-restart, no live re-seed for the kernel
	reasonReseedFailed = "re-seed failed" // OnChange=reseed-or-restart, the re-seed failed or timed out
)

// decision is a verdict and, for a restart, its reason.
type decision struct {
	do     verdict
	reason string
}

// decide chooses how to bring a kernel of mode to the plan p. It restarts
// only when the values the kernel holds differ (a non-empty plan), and
// never on first contact (a Full plan: the kernel's holdings are unknown,
// it has just started through the injector or the agent has just
// reconnected), which a full re-seed settles.
func decide(pol Policy, mode Mode, p Plan) decision {
	live := mode != ModeNone
	switch {
	case p.Empty():
		return decision{do: doNothing}
	case p.Full:
		if live {
			return decision{do: doReseed}
		}
		return decision{do: doNothing}
	case len(p.Unset) > 0 && pol.OnRevoke == ActRestart:
		return decision{do: doRestart, reason: reasonRevoke}
	case pol.OnChange == ActRestart:
		return decision{do: doRestart, reason: reasonChange}
	case pol.OnChange == ActReseedOrRestart && !live:
		return decision{do: doRestart, reason: reasonStartOnly}
	case live:
		return decision{do: doReseed}
	}
	return decision{do: doNothing}
}

// afterReseedError decides about a kernel whose re-seed of p failed while
// it was busy or not: with OnChange=reseed-or-restart a kernel that cannot
// be re-seeded is restarted, unless the plan was a first contact's (the
// kernel may well hold current values) or the kernel is single-threaded
// and busy (its re-seed waits for the cell: not a failure to re-seed).
// Otherwise the worker reconnects and tries again, as without a policy.
func afterReseedError(pol Policy, mode Mode, p Plan, busy bool) decision {
	if pol.OnChange != ActReseedOrRestart || p.Full || (mode == ModeShellIdle && busy) {
		return decision{do: doNothing}
	}
	return decision{do: doRestart, reason: reasonReseedFailed}
}

// restartDue is when a restart decided at now may run: not before the
// kernel's window since its last restart ends (last is zero when it was
// never restarted), then after the random splay drawn for it (a value in
// [0, Policy.Splay)).
func restartDue(pol Policy, now, last time.Time, splay time.Duration) time.Time {
	due := now
	if !last.IsZero() && pol.MinInterval > 0 {
		if end := last.Add(pol.MinInterval); end.After(due) {
			due = end
		}
	}
	return due.Add(splay)
}

// restartAfterBusyWait reports whether a restart goes ahead once its wait
// for idle is over: idle says whether the kernel became idle in time.
func restartAfterBusyWait(pol Policy, idle bool) bool {
	return idle || pol.BusyAction != BusyGiveUp
}

// changedNames are the names a plan sets and unsets: what a restart's log
// line gives as its cause. Names only, never a value.
func changedNames(p Plan) (set, unset []string) {
	set = make([]string, 0, len(p.Set))
	for n := range p.Set {
		set = append(set, n)
	}
	sort.Strings(set)
	return set, append([]string{}, p.Unset...)
}
