package agent

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// A snapshot taken before an update, a revocation or an access change still
// holds the values it was published with: the store never writes to a value
// buffer a snapshot shares (issue 8: a wiped buffer reached a kernel as a
// value full of NUL bytes).
func TestSnapshotValuesSurviveUpdates(t *testing.T) {
	st := newStore(aliceWS)
	if err := st.apply(put("s1", "DB-PASSWORD", 1, alice, "first-value"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := st.apply(put("s2", "TOKEN", 1, projP, "project-token"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	before, _ := st.snapshot()

	// Replace s1, delete nothing, and take project p away.
	if err := st.apply(put("s1", "DB-PASSWORD", 2, alice, "second-val"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := st.setAccess(Workspace{ID: "ws1", Owner: "alice"}); n != 1 {
		t.Fatalf("setAccess dropped %d, want 1", n)
	}
	st.publish(time.Now())
	after, _ := st.snapshot()

	if got := string(before.Env["DB-PASSWORD"].Value); got != "first-value" {
		t.Errorf("old snapshot's DB-PASSWORD changed under it: %q", got)
	}
	if got := string(before.Env["TOKEN"].Value); got != "project-token" {
		t.Errorf("old snapshot's TOKEN changed under it: %q", got)
	}
	if got := string(after.Env["DB-PASSWORD"].Value); got != "second-val" {
		t.Errorf("new snapshot's DB-PASSWORD = %q", got)
	}
	if _, ok := after.Env["TOKEN"]; ok {
		t.Error("new snapshot still has TOKEN after losing project p")
	}
}

// Readers encode snapshots while a writer replaces the same secrets as fast
// as it can, as kernel workers and /v1/env do during a burst of changes.
// Under -race a write to a shared buffer is reported; without it, every
// value read must be one that was written, whole.
func TestSnapshotReadersRaceWriter(t *testing.T) {
	st := newStore(aliceWS)
	value := func(v uint64) string { return strings.Repeat(string(rune('a'+v%26)), 64) }
	if err := st.apply(put("s1", "DB-PASSWORD", 1, alice, value(1)), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())

	const versions = 2000
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				d, _ := st.snapshot()
				p := plan(nil, d) // what a worker sends a kernel
				for n, v := range p.Set {
					if strings.ContainsRune(v, 0) || len(v) != 64 || strings.Count(v, v[:1]) != 64 {
						select {
						case errs <- n + " read torn or wiped":
						default:
						}
						return
					}
				}
			}
		}()
	}
	for v := uint64(2); v <= versions; v++ {
		if err := st.apply(put("s1", "DB-PASSWORD", v, alice, value(v)), time.Time{}); err != nil {
			t.Fatal(err)
		}
		st.publish(time.Now())
	}
	close(done)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	d, _ := st.snapshot()
	if got := string(d.Env["DB-PASSWORD"].Value); got != value(versions) {
		t.Errorf("final value %q, want %q", got, value(versions))
	}
}
