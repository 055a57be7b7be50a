package main

// The -fanout-live prototype: delivery without a standing consumer per
// agent. Measured with -fanout-server-cpuprofile at 10,000 workspaces, the
// server spends most of a fan-out in msgBlock.firstMatching: every
// workspace's consumer has a wildcard filter, and each time it is woken
// (its own record, a pull request, a heartbeat) it scans the stream linearly
// from where it last stopped, so every consumer walks past every record
// written: N consumers times N records per change. Here the records
// stream republishes each record (RePublish, done by the stream leader after
// it stored it) to nbsecrets.live.<workspace>.<secret>, each agent
// subscribes to its own workspace's there with core NATS before it reads
// what is already stored with a consumer, and deletes that consumer once
// read: the server then routes each record through its subject index and
// keeps no consumer per agent. Not the agent's way yet: see the README's
// fan-out section for what the agent and natsauth would need.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// livePrefix is where the prototype republishes the records.
const livePrefix = "nbsecrets.live."

// republishRecords adds a RePublish of every record to livePrefix+key to
// the records stream.
func republishRecords(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, protocol.StreamName())
	if err != nil {
		return fmt.Errorf("the records stream: %w", err)
	}
	cfg := st.CachedInfo().Config
	cfg.RePublish = &jetstream.RePublish{Source: "$KV." + protocol.Bucket + ".>", Destination: livePrefix + ">"}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("adding a RePublish to the records stream: %w", err)
	}
	return nil
}

// startLiveAgent subscribes agent a to its workspace's republished records,
// then reads what the stream holds for it with a consumer of its own and
// deletes that consumer. Records that arrive on the subscription while it
// reads are applied too; the agent keeps the first time of each version.
func startLiveAgent(ctx context.Context, js jetstream.JetStream, a *fanAgent, refused *atomic.Int64) error {
	nc := js.Conn()
	seqs := &liveSeqs{last: map[string]uint64{}}
	_, err := nc.Subscribe(livePrefix+a.ws+".>", func(m *nats.Msg) { // ends with the connection
		key, ok := strings.CutPrefix(m.Subject, livePrefix)
		if !ok || m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Subject") != "$KV."+protocol.Bucket+"."+key {
			refused.Add(1)
			return
		}
		seqs.check(key, m.Header)
		a.open(key, m.Data, refused)
	})
	if err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := js.CreateConsumer(cctx, protocol.StreamName(), jetstream.ConsumerConfig{
		FilterSubject:     protocol.WorkspaceFilter(a.ws),
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
	})
	if err != nil {
		return err
	}
	for pending := cons.CachedInfo().NumPending; pending > 0; {
		batch, err := cons.Fetch(int(min(pending, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			key, ok := protocol.KeyFromSubject(msg.Subject())
			if !ok {
				refused.Add(1)
				continue
			}
			a.open(key, msg.Data(), refused)
			if meta, err := msg.Metadata(); err == nil {
				pending = meta.NumPending
				seqs.read(key, meta.Sequence.Stream)
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if got == 0 {
			return fmt.Errorf("workspace %s: consumer delivered nothing with %d pending", a.ws, pending)
		}
	}
	seqs.caughtUp()
	return js.DeleteConsumer(cctx, protocol.StreamName(), cons.CachedInfo().Name)
}

// liveGaps counts republished records whose Nats-Last-Sequence (the
// previous sequence of the same subject) was not the one the agent held:
// the agent of the design would read everything again then.
var liveGaps atomic.Int64

// liveSeqs is an agent's last stream sequence per key, from its read and
// from the republished records, to check each republished record follows
// the one the agent holds.
type liveSeqs struct {
	mu    sync.Mutex
	ready bool // the read is done: check from now on
	last  map[string]uint64
}

func (l *liveSeqs) read(key string, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last[key] = max(l.last[key], seq)
}

func (l *liveSeqs) caughtUp() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ready = true
}

func (l *liveSeqs) check(key string, h nats.Header) {
	seq, err1 := strconv.ParseUint(h.Get("Nats-Sequence"), 10, 64)
	prev, err2 := strconv.ParseUint(h.Get("Nats-Last-Sequence"), 10, 64)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready {
		l.last[key] = max(l.last[key], seq)
		return
	}
	if err1 != nil || err2 != nil || prev != l.last[key] {
		liveGaps.Add(1)
	}
	l.last[key] = max(l.last[key], seq)
}
