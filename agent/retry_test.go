package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// failingKernel is a fake kernel whose re-seeds fail while fail is set; it
// records when each re-seed was tried.
type failingKernel struct {
	mu    sync.Mutex
	fail  bool
	tries []time.Time
	ok    int
}

func (k *failingKernel) dial(context.Context, string) (session, error) {
	return failingSession{k}, nil
}

func (k *failingKernel) set(fail bool) {
	k.mu.Lock()
	k.fail = fail
	k.mu.Unlock()
}

func (k *failingKernel) counts() (tries []time.Time, ok int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]time.Time(nil), k.tries...), k.ok
}

type failingSession struct{ k *failingKernel }

func (s failingSession) Describe() Description {
	return Description{Language: "python", Mode: ModeControl}
}
func (s failingSession) Apply(ctx context.Context, p Plan, managed string) error {
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	s.k.tries = append(s.k.tries, time.Now())
	if s.k.fail {
		return errors.New("NameError: name '__import__' is not defined") // what a user's `__import__ = None` causes
	}
	s.k.ok++
	return nil
}
func (failingSession) Probe(context.Context) error          { return nil }
func (failingSession) Done() <-chan struct{}                { return nil }
func (failingSession) Shutdown(context.Context, bool) error { return nil }
func (failingSession) Close() error                         { return nil }
func (failingSession) Busy() bool                           { return false }
func (failingSession) WaitIdle(context.Context) error       { return nil }

// A kernel whose re-seed always fails is tried again after 1s, 2s, 4s, ...
// up to a minute apart, not ten times a second; a re-seed that works resets
// the delay. In a synctest bubble: ten minutes pass in no time.
func TestReseedFailureBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStore(aliceWS)
		if err := st.apply(put("s1", "API-KEY", 1, alice, secretValue("backoff")), time.Time{}); err != nil {
			t.Fatal(err)
		}
		st.publish(time.Now())
		k := &failingKernel{fail: true}
		m := &metrics{}
		ks := &kernels{log: testLogger(t), st: st, dial: k.dial, probeInterval: time.Hour, applyTimeout: time.Second,
			metrics: m, workers: map[string]*worker{}}
		ctx, cancel := context.WithCancel(context.Background())
		ks.mu.Lock()
		ks.ctx = ctx
		ks.mu.Unlock()
		defer func() { cancel(); ks.wg.Wait() }()
		f := filepath.Join(t.TempDir(), "kernel-failing.json")
		if err := os.WriteFile(f, []byte(`{"ip": "127.0.0.1"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		ks.add(f)
		time.Sleep(10 * time.Minute)
		synctest.Wait()

		tries, _ := k.counts()
		// 0, 1, 3, 7, 15, 31, 63, 123, 183, ... 543 s: 15 tries in ten
		// minutes (before: about 6,000).
		if len(tries) < 10 || len(tries) > 16 {
			t.Fatalf("%d re-seeds tried in 10 minutes of failures, want 10 to 16", len(tries))
		}
		want := reseedRetryMin
		for i := 1; i < len(tries); i++ {
			gap := tries[i].Sub(tries[i-1])
			if gap < want || gap > want+time.Second {
				t.Errorf("try %d came %v after the one before, want %v", i, gap, want)
			}
			want = min(2*want, reseedRetryMax)
		}
		if got := tries[0].Sub(start); got > time.Second {
			t.Errorf("first re-seed tried %v after the kernel was found", got)
		}
		if s := ks.statuses(); len(s) != 1 || s[0].LastError == "" {
			t.Errorf("status does not show the failure: %+v", s)
		}
		m.mu.Lock()
		failed := m.reseedErrors
		m.mu.Unlock()
		if failed != uint64(len(tries)) {
			t.Errorf("reseed_errors = %d, want %d", failed, len(tries))
		}

		// The kernel is fixed: the next try works and the delay starts over.
		k.set(false)
		time.Sleep(reseedRetryMax)
		synctest.Wait()
		if _, ok := k.counts(); ok != 1 {
			t.Fatalf("%d re-seeds worked after the kernel was fixed, want 1", ok)
		}
		k.set(true)
		before, _ := k.counts()
		changed := time.Now()
		if err := st.apply(put("s1", "API-KEY", 2, alice, secretValue("backoff")), time.Time{}); err != nil {
			t.Fatal(err)
		}
		st.publish(time.Now())
		time.Sleep(4 * time.Second)
		synctest.Wait()
		after, _ := k.counts()
		tries = after[len(before):]
		// At once, then 1s and 2s later: the delay was reset.
		if len(tries) != 3 || tries[0] != changed || tries[1].Sub(tries[0]) != time.Second || tries[2].Sub(tries[1]) != 2*time.Second {
			t.Errorf("after a working re-seed, failures were tried at %v (change at %v), want at once, +1s, +2s", tries, changed)
		}
	})
}
