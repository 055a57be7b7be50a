package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
)

// policyAgentFlags is the restart policy of the second agent: restart on
// every change, with nothing artificial added (no splay, no window between
// restarts); the busy flags are the defaults, spelt out (the kernel is idle
// when a change comes). No --jupyter-url: the agent sends shutdown_request
// and relies on the kernel's manager, here the bench.
var policyAgentFlags = []string{
	"--on-change", "restart",
	"--busy-wait", "5m",
	"--busy-action", "restart",
	"--splay", "0s",
	"--restart-window", "0s",
}

// policyExitTimeout bounds the wait for the kernel to exit after a change.
const policyExitTimeout = 30 * time.Second

// policySettleTimeout bounds the wait, outside the clock, for the agent to
// serve the kernel again after a start.
const policySettleTimeout = 30 * time.Second

// policyBench drives the restart-by-policy row: the agent decides the
// restart and asks the kernel to shut down; the bench, as the kernel's
// manager, starts it again through the injector the moment it exits.
type policyBench struct {
	cfg *config
	w   *world
	a   *agentProc // the second agent, with policyAgentFlags
	k   *kernel
	seq *int
	// version is the policy secret's current version; restarts how many
	// restarts of the kernel the agent should have done so far.
	version  uint64
	restarts uint64
	row      *restartRow
}

// newPolicyBench creates the second user's secret, starts the second agent
// (its workspace receives only that secret, so the other rows' changes do
// not restart its kernel) and makes its kernel, not started, in the
// agent's runtime dir behind the injector.
func newPolicyBench(ctx context.Context, cfg *config, w *world, seq *int, cl *cleanups) (*policyBench, error) {
	*seq++
	info, err := w.policyClient.Create(ctx, secretName, []byte(sampleValue(*seq)), controlplane.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the policy row's secret: %w", err)
	}
	a, err := w.startAgent(ctx, cfg, "policy-agent", policyWorkspaceID, policyUserID, "", w.policyKeyFile, cl, policyAgentFlags...)
	if err != nil {
		return nil, err
	}
	k, err := newRestartKernel(cfg, w, a.runtimeDir, []string{cfg.nbsecrets, "inject", "--socket", a.socket, "--"}, cl)
	if err != nil {
		return nil, err
	}
	return &policyBench{cfg: cfg, w: w, a: a, k: k, seq: seq, version: info.Version}, nil
}

func (pb *policyBench) result() *restartRow { return pb.row }

func (pb *policyBench) kill() error { return pb.k.kill() }

// warm starts the kernel, waits until the agent serves it, and takes one
// unrecorded restart (warmByAgent).
func (pb *policyBench) warm(ctx context.Context) {
	pb.row = warmByAgent(ctx, pb.firstStart, pb.restart)
}

// warmByAgent is the unrecorded first start of a row whose restarts the
// agent does: firstStart, then one restart. The row is skipped when either
// fails, or when the value was not in the restarted kernel's start
// environment.
func warmByAgent(ctx context.Context, firstStart func(context.Context) error, restart func(context.Context) (restartSample, error)) *restartRow {
	row := &restartRow{}
	if err := firstStart(ctx); err != nil {
		if ctx.Err() != nil {
			row.Failed = "interrupted"
		} else {
			row.Skipped = "the first start failed: " + err.Error()
		}
		return row
	}
	smp, err := restart(ctx)
	switch {
	case ctx.Err() != nil:
		row.Failed = "interrupted"
	case err != nil:
		row.Skipped = "the first restart by the agent failed: " + err.Error()
	case !smp.FromStart:
		row.Skipped = "the new value was not in the restarted kernel's start environment (it came from a live re-seed): the start path does not supply values"
	}
	return row
}

// firstStart starts the kernel (on new ports should one be taken) and
// waits until the agent serves it live with the current version.
func (pb *policyBench) firstStart(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		if err := pb.k.start(); err != nil {
			return err
		}
		c, _, err := pb.k.connect(ctx)
		if err == nil {
			c.Close()
			break
		}
		_ = pb.k.kill()
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			return fmt.Errorf("starting the kernel: %w", err)
		}
		if err := pb.k.newPorts(); err != nil {
			return err
		}
	}
	ks, err := settle(ctx, pb.a, pb.k.ConnFile, pb.version, pb.restarts)
	if err != nil {
		return err
	}
	pb.restarts = ks.Restarts
	return nil
}

// settle waits until agent a serves the kernel of connFile live with at
// least version of the secret, no restart pending, and at least restarts
// restarts counted; it returns the kernel's status then.
func settle(ctx context.Context, a *agentProc, connFile string, version, restarts uint64) (agent.KernelStatus, error) {
	var got agent.KernelStatus
	sctx, cancel := context.WithTimeout(ctx, policySettleTimeout)
	defer cancel()
	err := a.waitFor(sctx, func(st *agent.Status) bool {
		for _, k := range st.Kernels {
			if k.ConnectionFile == connFile && k.State == agent.StateLive && k.PendingRestart == nil &&
				k.Holds[secretName].Version >= version && k.Restarts >= restarts {
				got = k
				return true
			}
		}
		return false
	})
	if err != nil {
		return got, fmt.Errorf("the agent did not serve the kernel with version %d after %d restarts: %w", version, restarts, err)
	}
	return got, nil
}

// settleRestart is the end of a sample of a row whose restarts the agent
// does, outside the clock: it waits until the agent serves the restarted
// kernel (settle), checks that the agent counted exactly the restarts
// expected, and sets smp's AgentRestart from the kernel's last_restart
// (the agent's wall clock), start being when Update returned.
func settleRestart(ctx context.Context, a *agentProc, connFile string, version, restarts uint64, start time.Time, smp *restartSample) (agent.KernelStatus, error) {
	ks, err := settle(ctx, a, connFile, version, restarts)
	if err != nil {
		return ks, err
	}
	if ks.Restarts != restarts {
		return ks, fmt.Errorf("the agent restarted the kernel %d times after %d changes (last reason %q)", ks.Restarts, restarts, ks.LastRestartReason)
	}
	if !ks.LastRestart.IsZero() {
		// The agent's time is wall clock only, so this difference is too.
		smp.AgentRestart, smp.GotAgent = ks.LastRestart.Sub(start), true
	}
	return ks, nil
}

// restart is one sample: update the policy secret; the clock starts when
// Update returns; the agent decides to restart the kernel and sends it
// shutdown_request; when the process exits the bench starts it again at
// once, on the same connection file through the injector, dials it, waits
// until it is ready and runs checkCell until it prints the new value; the
// clock stops when that output arrives. Then, outside the clock, it waits
// until the agent serves the new process and reads when the agent's
// restart began.
func (pb *policyBench) restart(ctx context.Context) (restartSample, error) {
	smp := restartSample{ByAgent: true}
	if err := pb.a.alive(); err != nil {
		return smp, err
	}
	exited := pb.k.Exited()
	select {
	case <-exited:
		return smp, fmt.Errorf("the kernel exited before the change; its output ends:\n%s", pb.k.out.String())
	default:
	}
	*pb.seq++
	value := sampleValue(*pb.seq)
	t0 := time.Now()
	info, err := pb.w.policyClient.Update(ctx, secretName, []byte(value))
	if err != nil {
		return smp, fmt.Errorf("update: %w", err)
	}
	start := time.Now()
	smp.Update = start.Sub(t0)
	pb.version = info.Version
	pb.restarts++

	timer := time.NewTimer(policyExitTimeout)
	defer timer.Stop()
	select {
	case <-exited:
	case <-timer.C:
		return smp, fmt.Errorf("the kernel did not exit within %v of the change: the agent did not restart it", policyExitTimeout)
	case <-ctx.Done():
		return smp, ctx.Err()
	}
	smp.Killed = time.Since(start)
	c, err := pb.k.startConnected(ctx, start, &smp, func() {
		if smp.Relaunched == 0 {
			smp.Relaunched = time.Since(start)
		}
	})
	if err != nil {
		return smp, err
	}
	at, fromStart, cells, err := runUntil(ctx, c, value, restartCellTimeout)
	c.Close()
	if err != nil {
		return smp, err
	}
	smp.Latency, smp.FromStart, smp.Cells = at.Sub(start), fromStart, cells

	_, err = settleRestart(ctx, pb.a, pb.k.ConnFile, pb.version, pb.restarts, start, &smp)
	return smp, err
}
