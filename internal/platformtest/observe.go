package platformtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// Sample is one GET /api/kernels: when it was taken and each kernel by id
// (a kernel missing from the map was gone: culled or shut down).
type Sample struct {
	At      time.Time
	Kernels map[string]APIKernel
	Err     error
}

// Sampler polls GET /api/kernels every interval until Stop.
type Sampler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []Sample
}

// Sample starts a Sampler; the test's end stops it if Stop was not called.
func (j *Jupyter) Sample(t testing.TB, interval time.Duration) *Sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sampler{cancel: cancel, done: make(chan struct{})}
	go func() { // ends when Stop cancels ctx
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			ks, err := j.Kernels()
			smp := Sample{At: time.Now(), Kernels: map[string]APIKernel{}, Err: err}
			for _, k := range ks {
				smp.Kernels[k.ID] = k
			}
			s.mu.Lock()
			s.samples = append(s.samples, smp)
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Samples are the samples so far.
func (s *Sampler) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.samples...)
}

// Stop stops polling and returns every sample.
func (s *Sampler) Stop() []Sample {
	s.cancel()
	<-s.done
	return s.Samples()
}

// IOPubMsg is one iopub message a Watcher saw.
type IOPubMsg struct {
	At            time.Time
	Type          string // msg_type
	State         string // execution_state of a status message
	ParentType    string // the parent request's msg_type
	ParentSession string // the session of the request it answers
}

// Watcher collects a kernel's iopub messages through a client of its own.
type Watcher struct {
	Client *jupyter.Client
	done   chan struct{}
	mu     sync.Mutex
	msgs   []IOPubMsg
}

// Watch connects to the kernel of connection file file and collects its
// iopub messages. With ready, it first waits until the kernel answers on
// shell (a kernel_info_request: activity the platform sees), so that no
// later message is missed; without, it sends the kernel nothing at all.
// The client closes at the test's end.
func Watch(t testing.TB, file string, ready bool) *Watcher {
	t.Helper()
	c := dialKernel(t, file)
	ctx, cancel := context.WithTimeout(context.Background(), kerneltest.StartTimeout)
	defer cancel()
	w := &Watcher{Client: c, done: make(chan struct{})}
	go func() { // ends when the client closes its iopub channel
		defer close(w.done)
		for m := range c.IOPub() {
			im := IOPubMsg{At: time.Now(), Type: m.Header.MsgType}
			if p := m.ParentHeader; p != nil {
				im.ParentType, im.ParentSession = p.MsgType, p.Session
			}
			if m.Header.MsgType == "status" {
				var st struct {
					State string `json:"execution_state"`
				}
				_ = json.Unmarshal(m.Content, &st)
				im.State = st.State
			}
			w.mu.Lock()
			w.msgs = append(w.msgs, im)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-w.done })
	if ready {
		if err := c.Ready(ctx); err != nil {
			t.Fatalf("kernel %s not ready: %v", file, err)
		}
	}
	return w
}

// dialKernel connects a client of the test's own to the kernel of
// connection file file; the caller closes it.
func dialKernel(t testing.TB, file string) *jupyter.Client {
	t.Helper()
	info, err := jupyter.ReadConnectionFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), kerneltest.StartTimeout)
	defer cancel()
	c, err := jupyter.Dial(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Foreign is every message from since until until (zero: no end) that
// does not answer a request of the watcher's own client: what the agent
// (or anyone else) caused.
func (w *Watcher) Foreign(since, until time.Time) []IOPubMsg {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []IOPubMsg
	for _, m := range w.msgs {
		if !m.At.Before(since) && (until.IsZero() || m.At.Before(until)) && m.ParentSession != w.Client.Session() {
			out = append(out, m)
		}
	}
	return out
}

// CellEnd is when the watcher's client saw the idle status of its own
// execute_request, the first after since: the end of its cell as the
// kernel published it. Zero when it has not seen one.
func (w *Watcher) CellEnd(since time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if !m.At.Before(since) && m.ParentSession == w.Client.Session() && m.ParentType == "execute_request" &&
			m.Type == "status" && m.State == "idle" {
			return m.At
		}
	}
	return time.Time{}
}

// Describe lists messages for an error.
func Describe(msgs []IOPubMsg, t0 time.Time) string {
	var b strings.Builder
	for i, m := range msgs {
		if i == 12 {
			fmt.Fprintf(&b, " ... (%d in all)", len(msgs))
			break
		}
		fmt.Fprintf(&b, " [%.1fs %s %s parent %s]", m.At.Sub(t0).Seconds(), m.Type, m.State, m.ParentType)
	}
	return b.String()
}
