package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// checkCell prints the variable's value and whether the process had that
// value in its start environment (/proc/self/environ keeps what exec gave
// the process; os.environ changes do not reach it): "VALUE start" or
// "VALUE live".
const checkCell = `import os as _o
_v = _o.environ.get(%q, '')
with open('/proc/self/environ', 'rb') as _f:
    _s = (%q + '=' + _v).encode() in _f.read().split(b'\0')
print(_v, 'start' if _s else 'live')
del _o, _v, _f, _s
`

// restartPortWait bounds the retries of a restarted kernel whose ports are
// not free yet (the old process's sockets may linger an instant).
const restartPortWait = 10 * time.Second

// restartCellTimeout bounds the check cells of one restart.
const restartCellTimeout = 10 * time.Second

// restartSample is one restart, all times from the moment Update returned.
type restartSample struct {
	Latency     time.Duration // the new value's output arrived: the measurement
	Update      time.Duration // the Update call itself, request to reply
	Killed      time.Duration // the old process was reaped
	Dialled     time.Duration // every port of the new kernel accepted a connection
	Ready       time.Duration // kernel_info answered and iopub live
	Cells       int           // cells run until one printed the new value
	FromStart   bool          // the new value was in the process's start environment
	PortRetries int           // starts that failed on a port still taken
	// The rows whose restarts the agent does (ByAgent): AgentRestart is
	// when the agent began its restart (its status's last_restart, the
	// agent's wall clock; GotAgent says it was read). Restart by agent
	// policy: Killed is when the old process, asked by the agent to shut
	// down, exited (and was reaped); Relaunched when the bench, as the
	// kernel's manager, had started the new process. Through Jupyter
	// Server (ViaServer): Killed is when the old process, shut down by the
	// server, exited (seen through a pidfd; the server reaps it); no
	// Relaunched; RESTReturned when the agent's restart call to the server
	// had returned (its log line's time, the agent's wall clock; GotREST
	// says it was found).
	ByAgent      bool
	AgentRestart time.Duration
	GotAgent     bool
	Relaunched   time.Duration
	ViaServer    bool
	RESTReturned time.Duration
	GotREST      bool
}

// restartRow is a restart row's result. Skipped or Failed say why it has
// no (or not all) samples.
type restartRow struct {
	Samples []restartSample
	Skipped string
	Failed  string
}

func (r *restartRow) latencies() []time.Duration {
	var out []time.Duration
	for _, s := range r.Samples {
		out = append(out, s.Latency)
	}
	return out
}

// restartRunner is one restart row, as measureRestarts drives it.
type restartRunner interface {
	// warm takes the row's unrecorded first start and sets its result,
	// skipped when the row cannot be measured.
	warm(ctx context.Context)
	// restart takes one sample.
	restart(ctx context.Context) (restartSample, error)
	// result is the row, after warm.
	result() *restartRow
	// kill stops the row's kernel.
	kill() error
}

// restartBench drives a restart row on one kernel.
type restartBench struct {
	cfg *config
	w   *world
	k   *kernel
	seq *int
	// valueInEnv: the bench puts the new value in the kernel's environment
	// (the baseline); otherwise the injector asks the agent for it.
	valueInEnv bool
	row        *restartRow
}

func (rb *restartBench) result() *restartRow { return rb.row }

func (rb *restartBench) kill() error { return rb.k.kill() }

// warm takes the row's unrecorded first start. The row is skipped when it
// fails, or when the value was not in the kernel's start environment.
func (rb *restartBench) warm(ctx context.Context) {
	rb.row = &restartRow{}
	smp, err := rb.restart(ctx)
	switch {
	case ctx.Err() != nil:
		rb.row.Failed = "interrupted"
	case err != nil:
		rb.row.Skipped = "the first start failed: " + err.Error()
	case !smp.FromStart:
		rb.row.Skipped = "the new value was not in the kernel's start environment (it came from a live re-seed): the start path does not supply values"
	}
}

// measureRestarts warms each row, then takes n samples of each, the rows
// alternating sample by sample so that all see the same machine load. A
// row that fails stops; the others go on. The kernels are killed at the
// end.
func measureRestarts(ctx context.Context, cfg *config, rbs []restartRunner, n int) error {
	defer func() {
		for _, rb := range rbs {
			_ = rb.kill()
		}
	}()
	for _, rb := range rbs {
		rb.warm(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	for range n {
		for _, rb := range rbs {
			row := rb.result()
			if row.Skipped != "" || row.Failed != "" {
				continue
			}
			smp, err := rb.restart(ctx)
			if err := ctx.Err(); err != nil {
				return err
			}
			if err != nil {
				row.Failed = err.Error()
				continue
			}
			row.Samples = append(row.Samples, smp)
			if err := sleepCtx(ctx, cfg.pause); err != nil {
				return err
			}
		}
	}
	return nil
}

// restart is one sample: update the secret; clock starts when Update
// returns; kill the kernel, start it again on the same connection file,
// dial, wait until ready, run checkCell until it prints the new value;
// clock stops when that output arrives.
func (rb *restartBench) restart(ctx context.Context) (restartSample, error) {
	var smp restartSample
	if err := rb.w.agent.alive(); err != nil {
		return smp, err
	}
	*rb.seq++
	value := sampleValue(*rb.seq)
	t0 := time.Now()
	if _, err := rb.w.client.Update(ctx, secretName, []byte(value)); err != nil {
		return smp, fmt.Errorf("update: %w", err)
	}
	start := time.Now()
	smp.Update = start.Sub(t0)

	if err := rb.k.kill(); err != nil {
		return smp, err
	}
	smp.Killed = time.Since(start)
	var extra []string
	if rb.valueInEnv {
		extra = []string{secretName + "=" + value}
	}
	c, err := rb.k.startConnected(ctx, start, &smp, nil, extra...)
	if err != nil {
		return smp, err
	}
	defer c.Close()
	at, fromStart, cells, err := runUntil(ctx, c, value, restartCellTimeout)
	if err != nil {
		return smp, err
	}
	smp.Latency, smp.FromStart, smp.Cells = at.Sub(start), fromStart, cells
	return smp, nil
}

// runUntil runs checkCell until it prints want, for at most timeout. It
// returns when the stream message with want arrived (stamped by a reader of
// the client's iopub channel, not when the cell's reply came), whether want
// was in the start environment, and how many cells it ran.
func runUntil(ctx context.Context, c *jupyter.Client, want string, timeout time.Duration) (time.Time, bool, int, error) {
	type stamped struct {
		at   time.Time
		text string
	}
	// A print can reach iopub in several stream messages (ipykernel
	// flushes on a timer): a line is stamped when its last piece arrives.
	stamps := make(chan stamped, 256)
	go func() { // ends when the client is closed (IOPub is closed then)
		var partial strings.Builder
		for m := range c.IOPub() {
			if m.Header.MsgType != "stream" {
				continue
			}
			at := time.Now()
			var s struct{ Name, Text string }
			if json.Unmarshal(m.Content, &s) != nil || s.Name != "stdout" {
				continue
			}
			partial.WriteString(s.Text)
			text := partial.String()
			i := strings.LastIndexByte(text, '\n')
			if i < 0 {
				continue
			}
			partial.Reset()
			partial.WriteString(text[i+1:])
			for _, line := range strings.Split(text[:i], "\n") {
				select {
				case stamps <- stamped{at, line}:
				default:
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	code := fmt.Sprintf(checkCell, secretName, secretName)
	for cells := 1; ; cells++ {
		res, err := c.Run(ctx, code)
		if err != nil {
			return time.Time{}, false, cells, fmt.Errorf("check cell: %w", err)
		}
		if err := res.Reply.Err(); err != nil {
			return time.Time{}, false, cells, fmt.Errorf("check cell: %w", err)
		}
		f := strings.Fields(res.Stdout)
		if len(f) == 2 && f[0] == want {
			for {
				select {
				case s := <-stamps:
					if g := strings.Fields(s.text); len(g) == 2 && g[0] == want {
						return s.at, f[1] == "start", cells, nil
					}
				case <-ctx.Done():
					return time.Time{}, false, cells, fmt.Errorf("check cell: its output never came on iopub: %w", ctx.Err())
				}
			}
		}
		if err := sleepCtx(ctx, time.Millisecond); err != nil {
			return time.Time{}, false, cells, fmt.Errorf("the kernel did not show the new value within %v", timeout)
		}
	}
}

// newRestartKernel makes the kernel of a restart row: its connection file
// in dir, behind prefix.
func newRestartKernel(cfg *config, w *world, dir string, prefix []string, cl *cleanups) (*kernel, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	k, err := newKernel(dir, cfg.python, prefix, kernelEnv(dir, w.dir+"/ipython"))
	if err != nil {
		return nil, err
	}
	cl.add(k.kill)
	return k, nil
}

// startConnected starts k with extraEnv and connects to it, starting it
// again while it dies of a port still taken, up to restartPortWait after
// start (when the sample's clock started). It fills smp's Dialled, Ready
// and PortRetries, and calls started, if not nil, after each start.
func (k *kernel) startConnected(ctx context.Context, start time.Time, smp *restartSample, started func(), extraEnv ...string) (*jupyter.Client, error) {
	for {
		if err := k.start(extraEnv...); err != nil {
			return nil, err
		}
		if started != nil {
			started()
		}
		c, ct, err := k.connect(ctx)
		if err == nil {
			smp.Dialled, smp.Ready = ct.Dialled.Sub(start), ct.Ready.Sub(start)
			return c, nil
		}
		_ = k.kill()
		if !errors.Is(err, errPortTaken) || time.Since(start) > restartPortWait {
			return nil, err
		}
		smp.PortRetries++
	}
}
