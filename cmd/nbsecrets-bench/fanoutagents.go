package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// maxCreateAttempts bounds the tries of one agent's consumer creation (a
// server busy creating thousands may time a request out).
const maxCreateAttempts = 6

// fanAgent is one workspace's agent, reduced to what the fan-out measures:
// the ordered consumer the real agent makes (agent/sync.go: the bucket's
// stream, one filter subject for the workspace, last value per subject),
// and the checks it makes on every record (protocol.Opener.Open: size,
// envelope, signature, fields, workspace, key, then the box and its
// binding). It records when it opened each version of a put.
type fanAgent struct {
	ws     string
	opener *protocol.Opener

	mu      sync.Mutex
	applied map[uint64]int64 // version -> when it was opened (Unix ns)
}

func (a *fanAgent) handle(msg jetstream.Msg, refused *atomic.Int64) {
	key, ok := protocol.KeyFromSubject(msg.Subject())
	if !ok || msg.Headers().Get("KV-Operation") != "" {
		refused.Add(1)
		return
	}
	a.open(key, msg.Data(), refused)
}

// open checks and opens the record data under key, and notes when.
func (a *fanAgent) open(key string, data []byte, refused *atomic.Int64) {
	sec, err := a.opener.Open(key, data)
	if err != nil {
		refused.Add(1)
		return
	}
	now := time.Now().UnixNano()
	clear(sec.Value)
	a.mu.Lock()
	if _, seen := a.applied[sec.Version]; !seen {
		a.applied[sec.Version] = now
	}
	a.mu.Unlock()
}

// appliedAt is when the agent first opened version or a later one.
func (a *fanAgent) appliedAt(version uint64) (int64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var at int64
	for v, t := range a.applied {
		if v >= version && (at == 0 || t < at) {
			at = t
		}
	}
	return at, at != 0
}

// runFanoutAgents is the agents' process of the fan-out benchmark
// (-fanout-agents FILE): it creates every agent's consumer, says
// "ready CREATED SECONDS RETRIES", then answers "wait VERSION DEADLINE_NS"
// with "applied VERSION COUNT FIRST_NS LAST_NS" until standard input ends.
func runFanoutAgents(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var af fanoutAgentsFile
	if err := json.Unmarshal(b, &af); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var jss []jetstream.JetStream
	var disconnects atomic.Int64
	for i := range max(af.Conns, 1) {
		nc, err := nats.Connect(strings.Join(af.URLs, ","), nats.Name(fmt.Sprintf("fanout-agents-%d", i)), nats.MaxReconnects(-1),
			nats.DisconnectErrHandler(func(_ *nats.Conn, _ error) { disconnects.Add(1) }))
		if err != nil {
			return fmt.Errorf("agents connecting to NATS: %w", err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		jss = append(jss, js)
	}
	agents := make([]*fanAgent, len(af.Workspaces))
	for i, w := range af.Workspaces {
		kp, err := nkeys.FromCurveSeed([]byte(w.Seed))
		if err != nil {
			return fmt.Errorf("workspace %s: %w", w.ID, err)
		}
		o, err := protocol.NewOpener(w.ID, []string{af.SignPub}, af.CurvePub, kp)
		if err != nil {
			return err
		}
		agents[i] = &fanAgent{ws: w.ID, opener: o, applied: map[uint64]int64{}}
	}

	var refused, retries, created atomic.Int64
	var liveLogs liveLog
	var follows sync.WaitGroup // live agents' Follow, ended by cancel
	defer func() { cancel(); follows.Wait() }()
	var ccMu sync.Mutex
	var ccs []jetstream.ConsumeContext
	defer func() {
		ccMu.Lock()
		defer ccMu.Unlock()
		for _, cc := range ccs {
			cc.Stop()
		}
	}()
	work := make(chan int)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := time.Now()
	for range max(af.Creators, 1) {
		wg.Go(func() { // owned by runFanoutAgents: ends when work is closed
			for i := range work {
				a := agents[i]
				js := jss[i%len(jss)]
				for attempt := 1; ; attempt++ {
					var cc jetstream.ConsumeContext
					var err error
					if af.Live {
						follows.Add(1)
						err = startLiveAgent(ctx, js, a, agent.Workspace{ID: a.ws, Owner: af.Owner, Projects: af.Projects}, &liveLogs, follows.Done)
						if err != nil {
							err = fmt.Errorf("%w (left running)", err)
							attempt = maxCreateAttempts // its Follow keeps trying: no second one
						}
					} else {
						cc, err = startAgentConsumer(ctx, js, a, time.Duration(af.HeartbeatMs)*time.Millisecond, &refused)
					}
					if err == nil {
						if cc != nil {
							ccMu.Lock()
							ccs = append(ccs, cc)
							ccMu.Unlock()
						}
						created.Add(1)
						break
					}
					if attempt >= maxCreateAttempts {
						err = fmt.Errorf("workspace %s: %w", a.ws, err)
						firstErr.CompareAndSwap(nil, &err)
						break
					}
					retries.Add(1)
					time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
				}
			}
		})
	}
	for i := range agents {
		work <- i
	}
	close(work)
	wg.Wait()
	took := time.Since(start)
	if p := firstErr.Load(); p != nil {
		fmt.Fprintln(os.Stderr, "nbsecrets-bench agents:", *p)
	}
	if af.CPUProfile != "" {
		f, err := os.Create(af.CPUProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	fmt.Printf("ready %d %f %d\n", created.Load(), took.Seconds(), retries.Load())

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var version uint64
		var deadline int64
		if _, err := fmt.Sscanf(in.Text(), "wait %d %d", &version, &deadline); err != nil {
			return fmt.Errorf("agents' process: unknown command %q", in.Text())
		}
		var count int
		var first, last int64
		for {
			count, first, last = 0, 0, 0
			for _, a := range agents {
				if at, ok := a.appliedAt(version); ok {
					count++
					if first == 0 || at < first {
						first = at
					}
					last = max(last, at)
				}
			}
			if count == len(agents) || time.Now().UnixNano() > deadline {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if n := disconnects.Load(); n > 0 {
			fmt.Fprintf(os.Stderr, "nbsecrets-bench agents: %d disconnects of the agents' connections so far\n", n)
		}
		fmt.Printf("applied %d %d %d %d\n", version, count, first, last)
	}
	if af.Live {
		fmt.Fprintf(os.Stderr, "nbsecrets-bench agents: %d republished records did not follow the one held (gaps), %d re-reads\n",
			liveLogs.gaps.Load(), liveLogs.rereads.Load())
		refused.Add(liveLogs.refused.Load())
	}
	if n := refused.Load(); n > 0 {
		return fmt.Errorf("agents refused %d records", n)
	}
	return in.Err()
}

// startAgentConsumer makes the agent's ordered consumer as agent/sync.go
// does and starts consuming it.
func startAgentConsumer(ctx context.Context, js jetstream.JetStream, a *fanAgent, heartbeat time.Duration, refused *atomic.Int64) (jetstream.ConsumeContext, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(cctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{protocol.WorkspaceFilter(a.ws)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, err
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) { a.handle(msg, refused) }, jetstream.PullHeartbeat(heartbeat))
	if err != nil {
		return nil, err
	}
	if cc == nil {
		return nil, errors.New("no consume context")
	}
	return cc, nil
}
