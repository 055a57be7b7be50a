package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// SoakEnv sets the number of changes TestSoak makes: 200 by default (make
// test), thousands under `make soak`.
const SoakEnv = "NBSECRETS_SOAK_CHANGES"

func soakChanges(t *testing.T) int {
	s := os.Getenv(SoakEnv)
	if s == "" {
		return 200
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 8 {
		t.Fatalf("$%s=%q: want a number of changes, at least 8", SoakEnv, s)
	}
	return n
}

// soakValue makes the i-th value of a name: recognisable, so that any value
// read back can be checked to be one that was written, whole.
func soakValue(name string, i int) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%06d-%s", name, i, hex.EncodeToString(b))
}

var soakValueRE = regexp.MustCompile(`^(SOAK_[A-D])-[0-9]{6}-[0-9a-f]{16}$`)

// TestSoak: changes from four concurrent writers (two users, private and
// project secrets, four names) through the real service and an embedded
// NATS into three real ipykernels served by one real agent, with injector
// requests (GET /v1/env) throughout. Every re-seed succeeds, every /v1/env
// answer holds only whole values that were written, every kernel ends with
// the last value of every name, no value reaches a log, and the heap after
// the run is back near where it was before it (issue 8: a value wiped while
// a snapshot was encoded reached a kernel as NUL bytes, one re-seed in about
// 17,000).
func TestSoak(t *testing.T) {
	kerneltest.Python(t)
	changes := soakChanges(t)
	f := newFixture(t)
	logs := &syncBuffer{}
	a, rt, sock := f.startSoakAgent("ws-alice", logs)
	var kernels []*e2eKernel
	for range 3 {
		k := kerneltest.Start(t, kerneltest.Options{Dir: rt})
		kernels = append(kernels, &e2eKernel{ws: "ws-alice", c: k.Client(t)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	type writer struct {
		user, name, project string
		last                string
		version             uint64
	}
	writers := []*writer{{user: "alice", name: "SOAK_A"}, {user: "alice", name: "SOAK_B"},
		{user: "bob", name: "SOAK_C", project: "ml"}, {user: "bob", name: "SOAK_D", project: "ml"}}
	for _, w := range writers {
		w.last = soakValue(w.name, 0)
		info := must(f.client(w.user).Create(ctx, w.name, []byte(w.last), CreateOptions{Project: w.project}))
		w.version = info.Version
	}
	for _, k := range kernels {
		for _, w := range writers {
			k.want(t, w.name, w.last)
		}
	}
	before, goroutines := heapAfterGC(), runtime.NumGoroutine()

	// Injector requests throughout.
	stop := make(chan struct{})
	var envs, envErrs atomic.Int64
	var badEnv atomic.Value // a description of the first bad answer, never a value
	var envWG sync.WaitGroup
	envWG.Add(1)
	go func() {
		defer envWG.Done()
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			env, err := getEnv(ctx, hc)
			if err != nil {
				envErrs.Add(1)
				badEnv.CompareAndSwap(nil, "request: "+err.Error())
				continue
			}
			envs.Add(1)
			for _, w := range writers {
				v, ok := env.Env[w.name]
				if m := soakValueRE.FindStringSubmatch(v); !ok || m == nil || m[1] != w.name {
					badEnv.CompareAndSwap(nil, fmt.Sprintf("%s: %d bytes that are not a value written for it (NUL bytes: %d)",
						w.name, len(v), strings.Count(v, "\x00")))
				}
			}
		}
	}()

	start := time.Now()
	var retried atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(writers))
	for _, w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := f.client(w.user)
			for i := 1; i <= changes/len(writers); i++ {
				v := soakValue(w.name, i)
				// A request the service did not answer in time (a loaded
				// machine) is sent again, as a user would: the value is
				// the same, so whichever is applied last leaves it.
				var info *SecretInfo
				var err error
				for try := 1; ; try++ {
					if info, err = c.Update(ctx, w.name, []byte(v)); err == nil || try == 5 || !errors.Is(err, ErrUnavailable) {
						break
					}
					retried.Add(1)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: update %d: %w", w.name, i, err)
					return
				}
				w.last, w.version = v, info.Version
			}
		}()
	}
	wg.Wait()
	written := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Every kernel converges to the last value of every name.
	holdsLast := func() error {
		for _, ks := range a.Status().Kernels {
			for _, w := range writers {
				// At least the version of the last answered update: one
				// sent again may have been applied twice.
				if h := ks.Holds[w.name]; h.Version < w.version {
					return fmt.Errorf("kernel %s holds %s v%d, want v%d", ks.ID, w.name, h.Version, w.version)
				}
			}
		}
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for err := holdsLast(); err != nil; err = holdsLast() {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not synchronisation
	}
	converged := time.Since(start)
	close(stop)
	envWG.Wait()
	for _, k := range kernels {
		for _, w := range writers {
			k.want(t, w.name, w.last)
		}
	}

	st := a.Status()
	if st.ReseedErrors != 0 {
		t.Errorf("%d re-seeds failed of %d", st.ReseedErrors, st.Reseeds+st.ReseedErrors)
	}
	for _, ks := range st.Kernels {
		if ks.State != agent.StateLive || ks.LastError != "" {
			t.Errorf("kernel %s: state %s, last error %q", ks.ID, ks.State, ks.LastError)
		}
	}
	if bad := badEnv.Load(); bad != nil {
		t.Errorf("a /v1/env answer was wrong: %s", bad)
	}
	if envs.Load() == 0 {
		t.Error("no /v1/env request was answered during the soak")
	}
	if leaked := regexp.MustCompile(`SOAK_[A-D]-[0-9]{6}-[0-9a-f]{16}`).FindString(logs.String() + f.logs.String()); leaked != "" {
		t.Error("a value appears in the logs")
	}

	after, goroutinesAfter := heapAfterGC(), runtime.NumGoroutine()
	if p := os.Getenv("NBSECRETS_SOAK_HEAPPROFILE"); p != "" { // where the heap went, for `go tool pprof`
		if fh, err := os.Create(p); err == nil {
			_ = pprof.WriteHeapProfile(fh)
			fh.Close()
		}
	}
	t.Logf("soak: %d changes to %d names by %d writers in %v (%.0f/s), all %d kernels at the last values %v after the first change",
		changes/len(writers)*len(writers), len(writers), len(writers), written.Round(time.Millisecond),
		float64(changes)/written.Seconds(), len(kernels), converged.Round(time.Millisecond))
	t.Logf("soak: %d re-seeds, %d failed; %d /v1/env answers, %d request errors; records applied %d; %d updates sent again after a service timeout",
		st.Reseeds, st.ReseedErrors, envs.Load(), envErrs.Load(), st.RecordsApplied, retried.Load())
	t.Logf("soak: heap after GC %.1f MiB before, %.1f MiB after (the whole test process: NATS, service, agent); goroutines %d before, %d after",
		float64(before)/(1<<20), float64(after)/(1<<20), goroutines, goroutinesAfter)
	// Flat: what the run leaves behind is bounded, whatever its length.
	if limit := before + before/2 + 16<<20; after > limit {
		t.Errorf("heap grew from %d to %d bytes over the soak (limit %d)", before, after, limit)
	}
	if goroutinesAfter > goroutines+20 {
		t.Errorf("goroutines grew from %d to %d over the soak", goroutines, goroutinesAfter)
	}
}

// heapAfterGC is the live heap once the garbage collector has run.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func getEnv(ctx context.Context, hc *http.Client) (*localapi.EnvResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://agent"+localapi.EnvPath, nil)
	if err != nil {
		return nil, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", res.Status)
	}
	var env localapi.EnvResponse
	if err := json.NewDecoder(res.Body).Decode(&env); err != nil {
		return nil, err
	}
	return &env, nil
}

// startSoakAgent runs a real agent for workspace ws as startWorkspace does,
// and returns it with its runtime dir and local socket.
func (f *fixture) startSoakAgent(ws string, logs *syncBuffer) (*agent.Agent, string, string) {
	t := f.t
	t.Helper()
	access, ok := f.dir.AccessOf(ws)
	if !ok {
		t.Fatalf("no workspace %s", ws)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: ws, Level: hclog.Debug, Output: logs})
	nc, err := agent.Connect(f.srv.ClientURL(), logger)
	if err != nil {
		t.Fatal(err)
	}
	opener := must(protocol.NewOpener(ws, []string{must(f.sign.PublicKey())}, must(f.curve.PublicKey()), f.wsKeys[ws]))
	rt, sock := t.TempDir(), filepath.Join(t.TempDir(), "agent.sock")
	a, err := agent.New(agent.Config{
		Workspace: agent.Workspace{ID: ws, Owner: access.Owner, Projects: access.Projects, Communities: access.Communities},
		Opener:    opener, Conn: nc, RuntimeDirs: []string{rt}, Socket: sock, Logger: logger, Rescan: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", ws, err)
		}
		nc.Close()
	})
	return a, rt, sock
}
