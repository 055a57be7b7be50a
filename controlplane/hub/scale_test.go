package hub

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// bigHub fills h with users users and groups groups, every user in two
// groups, one in ten with a running server, like a JupyterHub 3.0 model
// (roles, times, the server's fields).
func bigHub(h *fakeHub, users, groups int) {
	us := make([]User, users)
	gs := make([]Group, groups)
	for i := range gs {
		gs[i] = Group{Name: fmt.Sprintf("group%04d", i)}
	}
	for i := range us {
		name := fmt.Sprintf("user%05d", i)
		a, b := i%groups, (i*7+3)%groups
		us[i] = User{Name: name, Kind: "user", Groups: []string{gs[a].Name, gs[b].Name}, Servers: map[string]Server{}}
		if i%10 == 0 {
			us[i].Servers[""] = Server{Name: "", Ready: true, URL: "/user/" + name + "/"}
		}
		gs[a].Users = append(gs[a].Users, name)
		gs[b].Users = append(gs[b].Users, name)
	}
	h.set(us, gs)
}

type cost struct {
	requests, bytes int64
	took            time.Duration
	alloc           uint64
}

func (c cost) String() string {
	return fmt.Sprintf("%d requests, %d KiB from the hub, %v, %d MiB allocated", c.requests, c.bytes>>10, c.took.Round(100*time.Microsecond), c.alloc>>20)
}

func measure(h *fakeHub, f func()) cost {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	r0, b0 := h.count.requests.Load(), h.count.bytes.Load()
	start := time.Now()
	f()
	took := time.Since(start)
	runtime.ReadMemStats(&m1)
	return cost{h.count.requests.Load() - r0, h.count.bytes.Load() - b0, took, m1.TotalAlloc - m0.TotalAlloc}
}

// TestRefreshCost measures what following a hub of 5,000 users and 500
// groups costs: the first refresh, a refresh when nothing changed (what
// every poll costs on a quiet hub), and an agent's periodic
// re-registration.
func TestRefreshCost(t *testing.T) {
	if testing.Short() || raceDetector {
		t.Skip("a measurement (not under -short or the race detector)")
	}
	h := newFakeHub(t)
	bigHub(h, 5000, 500)
	src, _ := NewSource(SourceOptions{Client: h.client()})
	var applied int
	src.apply = func(*controlplane.Directory) error { applied++; return nil }
	ctx := context.Background()
	var d *controlplane.Directory
	var err error
	first := measure(h, func() { d, err = src.Refresh(ctx) })
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Users) != 5000 || len(d.Projects) != 500 {
		t.Fatalf("the directory has %d users and %d projects, want 5000 and 500", len(d.Users), len(d.Projects))
	}
	// 500 agents registered (put in directly: each registration through
	// Register would build a directory).
	src.mu.Lock()
	for i := 0; i < 500; i++ {
		name := fmt.Sprintf("user%05d", i*10)
		src.regs[name] = Registration{Workspace: name, User: name, CurveKey: curveKey(t), At: time.Now()}
	}
	src.regsGen++
	src.mu.Unlock()
	withServers := measure(h, func() { d, err = src.Refresh(ctx) })
	if err != nil || len(d.Workspaces) != 500 {
		t.Fatalf("%v, %d workspaces", err, len(d.Workspaces))
	}
	applied = 0
	const n = 5
	// What the service does every Interval on a quiet hub.
	quiet := measure(h, func() {
		for range n {
			if _, err := src.refresh(ctx, pollGroups); err != nil {
				t.Fatal(err)
			}
		}
	})
	// What it does every UsersInterval on a quiet hub.
	quietUsers := measure(h, func() {
		for range n {
			if _, err := src.refresh(ctx, pollUsersOnly); err != nil {
				t.Fatal(err)
			}
		}
	})
	if applied != 0 {
		t.Errorf("%d unchanged refreshes applied a directory", applied)
	}
	// A group change: read, built, applied.
	h.mu.Lock()
	h.groups[7].Users = h.groups[7].Users[1:]
	h.mu.Unlock()
	change := measure(h, func() {
		if _, err := src.refresh(ctx, pollGroups); err != nil {
			t.Fatal(err)
		}
	})
	if applied != 1 {
		t.Errorf("a group change applied %d directories, want 1", applied)
	}
	again := measure(h, func() {
		for i := range n {
			name := fmt.Sprintf("user%05d", i*10)
			src.mu.Lock()
			key := src.regs[name].CurveKey
			src.mu.Unlock()
			if _, err := src.Register(ctx, Registration{Workspace: name, User: name, CurveKey: key}); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Logf("measured, 5000 users, 500 groups, 500 servers: first refresh: %v", first)
	t.Logf("measured: the refresh with 500 registered servers: %v", withServers)
	t.Logf("measured: one poll (every %v) when nothing changed: %v", DefaultInterval, cost{quiet.requests / n, quiet.bytes / n, quiet.took / n, quiet.alloc / n})
	t.Logf("measured: one poll of the users (every %v) when nothing changed: %v", DefaultUsersInterval, cost{quietUsers.requests / n, quietUsers.bytes / n, quietUsers.took / n, quietUsers.alloc / n})
	t.Logf("measured: one poll that finds a group changed: %v", change)
	t.Logf("measured: one unchanged re-registration: %v", cost{again.requests / n, again.bytes / n, again.took / n, again.alloc / n})
}

// TestRealHubCost measures the hub's side of a poll on a real JupyterHub,
// when NBSECRETS_MEASURE_HUB_API ("http://127.0.0.1:8081/hub/api") and
// NBSECRETS_MEASURE_HUB_TOKEN (a token with the service's scopes) name
// one: the users list and the groups list, each read whole as a poll
// reads it.
func TestRealHubCost(t *testing.T) {
	api, token := os.Getenv("NBSECRETS_MEASURE_HUB_API"), os.Getenv("NBSECRETS_MEASURE_HUB_TOKEN")
	if api == "" || token == "" {
		t.Skip("NBSECRETS_MEASURE_HUB_API and NBSECRETS_MEASURE_HUB_TOKEN name no hub")
	}
	c := &Client{APIURL: api, Token: token, HTTP: &http.Client{Timeout: 5 * time.Minute}}
	ctx := context.Background()
	const n = 3
	var users []User
	var groups []Group
	start := time.Now()
	for range n {
		var err error
		if users, err = c.Users(ctx); err != nil {
			t.Fatal(err)
		}
	}
	u := time.Since(start) / n
	start = time.Now()
	for range n {
		var err error
		if groups, err = c.Groups(ctx); err != nil {
			t.Fatal(err)
		}
	}
	g := time.Since(start) / n
	members := 0
	for _, gr := range groups {
		members += len(gr.Users)
	}
	t.Logf("measured on the hub: %d users read in %v; %d groups (%d memberships) read in %v", len(users), u.Round(time.Millisecond), len(groups), members, g.Round(time.Millisecond))
}

// TestRealHubGroupChange measures, on the real hub of TestRealHubCost,
// the time from a group change on the hub to the directory that has it,
// with the default polls; NBSECRETS_MEASURE_HUB_ADMIN_TOKEN changes the
// group (group0007 loses, then regains, its first member).
func TestRealHubGroupChange(t *testing.T) {
	api, token, admin := os.Getenv("NBSECRETS_MEASURE_HUB_API"), os.Getenv("NBSECRETS_MEASURE_HUB_TOKEN"), os.Getenv("NBSECRETS_MEASURE_HUB_ADMIN_TOKEN")
	if api == "" || token == "" || admin == "" {
		t.Skip("NBSECRETS_MEASURE_HUB_API, _TOKEN and _ADMIN_TOKEN name no hub")
	}
	src, _ := NewSource(SourceOptions{Client: &Client{APIURL: api, Token: token, HTTP: &http.Client{Timeout: 5 * time.Minute}}})
	got := make(chan *controlplane.Directory, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx, func(d *controlplane.Directory) error { got <- d; return nil })
	}()
	defer func() { cancel(); <-done }()
	var d *controlplane.Directory
	select {
	case d = <-got:
	case <-time.After(10 * time.Minute):
		t.Fatal("no first directory")
	}
	var member string
	for u := range roles(d, "group0007") {
		member = u
		break
	}
	change := func(method string) {
		body := strings.NewReader(fmt.Sprintf(`{"users": [%q]}`, member))
		req, _ := http.NewRequest(method, api+"/groups/group0007/users", body)
		req.Header.Set("Authorization", "token "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode >= 300 {
			t.Fatalf("%s group0007's member %s: %v %v", method, member, err, resp)
		}
		resp.Body.Close()
	}
	for i, step := range []struct {
		method string
		in     bool
	}{{"DELETE", false}, {"POST", true}, {"DELETE", false}, {"POST", true}} {
		start := time.Now()
		change(step.method)
		for {
			select {
			case d = <-got:
			case <-time.After(5 * time.Minute):
				t.Fatalf("change %d not seen", i)
			}
			if _, in := roles(d, "group0007")[member]; in == step.in {
				break
			}
		}
		t.Logf("measured on the hub: %s %s in group0007 took effect %v after the hub's change", step.method, member, time.Since(start).Round(time.Millisecond))
	}
}

// timedTransport sums the round trips of the requests it carries.
type timedTransport struct {
	mu       sync.Mutex
	requests int
	busy     time.Duration
}

func (t *timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		err = rerr
	}
	t.mu.Lock()
	t.requests++
	t.busy += time.Since(start)
	t.mu.Unlock()
	return resp, err
}

// TestRealHubLoad measures, on the real hub of TestRealHubCost, the share
// of the hub's time that following it takes: the service watches it for
// NBSECRETS_MEASURE_HUB_SECONDS (after its first directory), and the
// round trips of its requests are summed.
func TestRealHubLoad(t *testing.T) {
	api, token := os.Getenv("NBSECRETS_MEASURE_HUB_API"), os.Getenv("NBSECRETS_MEASURE_HUB_TOKEN")
	seconds, _ := strconv.Atoi(os.Getenv("NBSECRETS_MEASURE_HUB_SECONDS"))
	if api == "" || token == "" || seconds <= 0 {
		t.Skip("NBSECRETS_MEASURE_HUB_API, _TOKEN and _SECONDS name no hub")
	}
	tt := &timedTransport{}
	src, _ := NewSource(SourceOptions{Client: &Client{APIURL: api, Token: token, HTTP: &http.Client{Transport: tt, Timeout: 5 * time.Minute}}})
	first := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx, func(*controlplane.Directory) error {
			select {
			case first <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	<-first
	tt.mu.Lock()
	r0, b0 := tt.requests, tt.busy
	tt.mu.Unlock()
	window := time.Duration(seconds) * time.Second
	time.Sleep(window) // the measurement's window, not synchronisation
	tt.mu.Lock()
	r, b := tt.requests-r0, tt.busy-b0
	tt.mu.Unlock()
	t.Logf("measured on the hub: following it for %v took %d requests, %v of the hub's time (%.1f%%)", window, r, b.Round(time.Millisecond), 100*b.Seconds()/window.Seconds())
}
