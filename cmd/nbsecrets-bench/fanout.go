package main

// The fan-out benchmark (-fanout N): one project secret visible to N
// workspaces, N agents' worth of ordered consumers, the secret updated.
// See fanoutDoc, printed by -fanout with -h too.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// fanoutConfig is the command line of a fan-out run.
type fanoutConfig struct {
	n          int           // workspaces
	rounds     int           // updates measured
	nodes      int           // NATS servers: 1, or 3 for a cluster
	conns      int           // the agents' NATS connections
	creators   int           // agents creating their consumers at once
	heartbeat  time.Duration // the consumers' idle heartbeat
	natsServer string        // the nats-server binary
	timeout    time.Duration // how long one round may take to apply everywhere
	out        string        // JSON report file
	cpuProfile string        // pprof file over the update rounds
	// serverCPUProfile is the first nats-server's CPU profile over the
	// update rounds (its prof_port, fetched over loopback).
	serverCPUProfile string
	agentsCPUProfile string // the agents' process's, from ready to the end
	// live: the agent's live delivery (agent.DeliveryLive through
	// agent.Follow, fanoutlive.go) instead of a standing consumer each.
	live bool
}

// The targets of issue 12, for a single server on two cores.
const (
	targetWrittenS  = 2.0
	targetAppliedS  = 5.0
	targetCPUPerWSu = 60.0
)

// fanoutAgentsFile is what the agents' process reads: where NATS is, the
// service's public keys, and each workspace's id and curve seed.
type fanoutAgentsFile struct {
	URLs     []string `json:"urls"`
	SignPub  string   `json:"sign_pub"`
	CurvePub string   `json:"curve_pub"`
	Conns    int      `json:"conns"`
	Creators int      `json:"creators"`
	// HeartbeatMs is the consumers' idle heartbeat (the agent's: 2000).
	HeartbeatMs int64             `json:"heartbeat_ms"`
	Workspaces  []fanoutWorkspace `json:"workspaces"`
	// CPUProfile is where the agents' process writes its CPU profile from
	// "ready" to the end ("": none).
	CPUProfile string `json:"cpu_profile,omitempty"`
	// Live: each agent runs the product's live delivery (agent.Follow,
	// fanoutlive.go), the workspace's owner and projects below.
	Live     bool     `json:"live,omitempty"`
	Owner    string   `json:"owner,omitempty"`
	Projects []string `json:"projects,omitempty"`
}

type fanoutWorkspace struct {
	ID   string `json:"id"`
	Seed string `json:"seed"` // curve seed, "SX..."
}

// fanoutRound is one update, measured.
type fanoutRound struct {
	Version      uint64  `json:"version"`
	WrittenS     float64 `json:"written_s"` // Update call to its reply: every record written and acknowledged
	AppliedS     float64 `json:"applied_s"` // Update call to the last agent opening its record; -1: some never did
	FirstS       float64 `json:"first_s"`   // Update call to the first agent opening its record
	Applied      int     `json:"applied"`   // agents that opened the new version within -timeout
	CPUUsPerWS   float64 `json:"cpu_us_per_workspace"`
	ServiceCPUMs float64 `json:"service_cpu_ms"`
	// ServerCPUMs is the first nats-server's CPU from the Update call until
	// every agent applied it (or -fanout-timeout).
	ServerCPUMs float64 `json:"server_cpu_ms"`
}

// fanoutReport is the JSON report; its last line on stdout is the summary.
type fanoutReport struct {
	Workspaces           int           `json:"workspaces"`
	Nodes                int           `json:"nodes"`
	HeartbeatS           float64       `json:"heartbeat_s"`
	Cores                int           `json:"cores"`
	ConsumersCreated     int           `json:"consumers_created"`
	ConsumerCreateS      float64       `json:"consumer_create_s"`
	ConsumerCreatePerS   float64       `json:"consumer_create_per_s"`
	ConsumerCreateRetry  int           `json:"consumer_create_retries"`
	ServerSettleS        float64       `json:"server_settle_s"`
	ServerRSSBeforeKiB   int64         `json:"server_rss_before_kib"`
	ServerRSSAfterKiB    int64         `json:"server_rss_after_kib"`
	ServerKiBPerConsumer float64       `json:"server_kib_per_consumer"`
	AgentsRSSKiB         int64         `json:"agents_rss_kib"`
	InitialWrittenS      float64       `json:"initial_written_s"`
	InitialAppliedS      float64       `json:"initial_applied_s"`
	Rounds               []fanoutRound `json:"rounds"`
	Load                 string        `json:"loadavg"`
	Live                 bool          `json:"live,omitempty"`
}

// fanoutSummary is the last line: the median round.
type fanoutSummary struct {
	Workspaces           int     `json:"workspaces"`
	Nodes                int     `json:"nodes"`
	WrittenS             float64 `json:"written_s"`
	AppliedS             float64 `json:"applied_s"`
	Applied              int     `json:"applied"`
	CPUUsPerWS           float64 `json:"cpu_us_per_workspace"`
	ConsumerCreatePerS   float64 `json:"consumer_create_per_s"`
	ServerKiBPerConsumer float64 `json:"server_kib_per_consumer"`
}

func runFanout(ctx context.Context, cfg *fanoutConfig) (err error) {
	var cl cleanups
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
	}()
	dir, err := os.MkdirTemp("", "nbsecrets-fanout-")
	if err != nil {
		return err
	}
	cl.add(func() error { return os.RemoveAll(dir) })
	rep := &fanoutReport{Live: cfg.live, Workspaces: cfg.n, Nodes: cfg.nodes, Cores: runtime.NumCPU(), HeartbeatS: cfg.heartbeat.Seconds()}

	progress(fmt.Sprintf("starting %d nats-server process(es)", cfg.nodes))
	servers, err := startNATSProcesses(ctx, cfg.natsServer, cfg.nodes, dir, cfg.serverCPUProfile != "", &cl)
	if err != nil {
		return err
	}
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.url
	}

	progress(fmt.Sprintf("making keys for %d workspaces", cfg.n))
	sign, err := nkeys.CreateAccount()
	if err != nil {
		return err
	}
	curve, err := nkeys.CreateCurveKeys()
	if err != nil {
		return err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return err
	}
	signPub, _ := sign.PublicKey()
	curvePub, _ := curve.PublicKey()
	userPub, _ := user.PublicKey()
	d := &controlplane.Directory{
		Users:    []controlplane.User{{ID: "fan-owner", PublicKey: userPub}},
		Projects: []controlplane.Project{{ID: "fan", Members: []controlplane.Member{{User: "fan-owner", Role: controlplane.RoleAdmin}}}},
	}
	af := fanoutAgentsFile{URLs: urls, SignPub: signPub, CurvePub: curvePub, Conns: cfg.conns, Creators: cfg.creators,
		HeartbeatMs: cfg.heartbeat.Milliseconds(), CPUProfile: cfg.agentsCPUProfile, Live: cfg.live,
		Owner: "fan-owner", Projects: []string{"fan"}}
	for i := range cfg.n {
		kp, err := nkeys.CreateCurveKeys()
		if err != nil {
			return err
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		id := fmt.Sprintf("ws-%05d", i)
		d.Workspaces = append(d.Workspaces, controlplane.Workspace{ID: id, Owner: "fan-owner", Projects: []string{"fan"}, CurveKey: pub})
		af.Workspaces = append(af.Workspaces, fanoutWorkspace{ID: id, Seed: string(seed)})
	}

	progress("starting the secrets service")
	svcConn, err := nats.Connect(strings.Join(urls, ","), nats.Name("nbsecrets-service"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("service connecting to NATS: %w", err)
	}
	cl.add(func() error { svcConn.Close(); return nil })
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: sign, CurveKey: curve, Directory: d, Replicas: min(cfg.nodes, 3),
		Live: cfg.live})
	if err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = svc.Start(startCtx)
	cancel()
	if err != nil {
		return err
	}
	cl.add(svc.Stop)
	clientConn, err := nats.Connect(strings.Join(urls, ","), nats.Name("nbsecrets-bench-client"))
	if err != nil {
		return err
	}
	cl.add(func() error { clientConn.Close(); return nil })
	client := controlplane.NewClient(clientConn, "fan-owner", user, curvePub)

	rep.ServerRSSBeforeKiB = servers[0].rssKiB()

	progress(fmt.Sprintf("starting %d agents' ordered consumers in a separate process (%d connections, %d creating at once)", cfg.n, cfg.conns, cfg.creators))
	agents, err := startFanoutAgents(ctx, dir, &af, &cl)
	if err != nil {
		return err
	}
	rep.ConsumersCreated, rep.ConsumerCreateS, rep.ConsumerCreateRetry = agents.created, agents.createS, agents.retries
	if agents.createS > 0 {
		rep.ConsumerCreatePerS = float64(agents.created) / agents.createS
	}
	if agents.created != cfg.n {
		return fmt.Errorf("only %d of %d agents' consumers could be created", agents.created, cfg.n)
	}
	progress(fmt.Sprintf("%d consumers in %.1f s (%.0f/s, %d retries)", agents.created, agents.createS, rep.ConsumerCreatePerS, agents.retries))
	// Let the server settle after the mass creation before measuring: it
	// scans for each new consumer's first message for a while.
	settle, err := servers[0].settle(ctx, 2*time.Minute)
	if err != nil {
		return err
	}
	rep.ServerSettleS = settle.Seconds()
	progress(fmt.Sprintf("server settled after %.1f s", rep.ServerSettleS))
	rep.ServerRSSAfterKiB = servers[0].rssKiB()
	rep.ServerKiBPerConsumer = float64(rep.ServerRSSAfterKiB-rep.ServerRSSBeforeKiB) / float64(cfg.n)
	rep.AgentsRSSKiB = procRSSKiB(agents.cmd.Process.Pid)

	var serverProfile chan error
	if cfg.serverCPUProfile != "" {
		serverProfile = make(chan error, 1)
		go func() { // owned by runFanout: waited for after the rounds
			serverProfile <- fetchProfile(ctx, servers[0].profURL, serverProfileWindow, cfg.serverCPUProfile)
		}()
	}
	// The first version: created, so every record is new.
	progress("creating the project secret (version 1)")
	t0 := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, cfg.timeout+time.Minute)
	_, err = client.Create(callCtx, "FANOUT_TOKEN", []byte("fan-1"), controlplane.CreateOptions{Project: "fan"})
	cancel()
	if err != nil {
		return fmt.Errorf("creating the secret: %w", err)
	}
	rep.InitialWrittenS = time.Since(t0).Seconds()
	res, err := agents.wait(1, t0.Add(cfg.timeout))
	if err != nil {
		return err
	}
	rep.InitialAppliedS = res.last.Sub(t0).Seconds()
	if res.count != cfg.n {
		rep.InitialAppliedS = -1 // not every agent; the rounds say how many
	}
	progress(fmt.Sprintf("version 1: written %.2f s, applied %d/%d, last %.2f s", rep.InitialWrittenS, res.count, cfg.n, rep.InitialAppliedS))

	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		cl.add(func() error { pprof.StopCPUProfile(); return f.Close() })
	}
	for r := range cfg.rounds {
		version := uint64(r + 2)
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		before, serverBefore := cpuTime(), servers[0].cpu()
		t0 := time.Now()
		callCtx, cancel := context.WithTimeout(ctx, cfg.timeout+time.Minute)
		info, err := client.Update(callCtx, "FANOUT_TOKEN", []byte(fmt.Sprintf("fan-%d", version)))
		cancel()
		written := time.Since(t0)
		cpu := cpuTime() - before
		if err != nil {
			return fmt.Errorf("updating the secret: %w", err)
		}
		if info.Version != version {
			return fmt.Errorf("update made version %d, want %d", info.Version, version)
		}
		res, err := agents.wait(version, t0.Add(cfg.timeout))
		if err != nil {
			return err
		}
		serverCPU := servers[0].cpu() - serverBefore
		round := fanoutRound{Version: version, WrittenS: written.Seconds(), Applied: res.count, ServerCPUMs: float64(serverCPU.Milliseconds()),
			CPUUsPerWS: float64(cpu.Microseconds()) / float64(cfg.n), ServiceCPUMs: float64(cpu.Microseconds()) / 1000}
		if res.count > 0 {
			round.AppliedS = res.last.Sub(t0).Seconds()
			round.FirstS = res.first.Sub(t0).Seconds()
		}
		if res.count < cfg.n {
			round.AppliedS = -1 // not every agent: see applied
		}
		rep.Rounds = append(rep.Rounds, round)
		progress(fmt.Sprintf("version %d: written %.2f s, applied %d/%d, last %.2f s, service CPU %.1f µs/workspace, server CPU %.2f s",
			version, round.WrittenS, res.count, cfg.n, round.AppliedS, round.CPUUsPerWS, serverCPU.Seconds()))
	}
	if serverProfile != nil {
		if err := <-serverProfile; err != nil {
			return fmt.Errorf("the server's CPU profile: %w", err)
		}
	}
	rep.Load = loadavg()
	return printFanout(os.Stdout, cfg, rep)
}

// serverProfileWindow is how long the server's CPU profile runs from the
// secret's creation on.
const serverProfileWindow = 30 * time.Second

// fetchProfile writes the CPU profile the server at url takes over window.
func fetchProfile(ctx context.Context, url string, window time.Duration, path string) error {
	ctx, cancel := context.WithTimeout(ctx, window+time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?seconds=%d", url, int(window.Seconds())), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// printFanout writes the table, the JSON file and, last, the summary line.
func printFanout(w io.Writer, cfg *fanoutConfig, rep *fanoutReport) error {
	sum := fanoutSummary{Workspaces: rep.Workspaces, Nodes: rep.Nodes, ConsumerCreatePerS: round2(rep.ConsumerCreatePerS),
		ServerKiBPerConsumer: round2(rep.ServerKiBPerConsumer)}
	med := func(f func(fanoutRound) float64) float64 {
		v := make([]float64, len(rep.Rounds))
		for i, r := range rep.Rounds {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[(len(v)-1)/2] // the lower median: a measured round
	}
	sum.WrittenS = round2(med(func(r fanoutRound) float64 { return r.WrittenS }))
	sum.AppliedS = round2(med(func(r fanoutRound) float64 {
		if r.AppliedS < 0 {
			return math.Inf(1) // never: slower than any
		}
		return r.AppliedS
	}))
	sum.CPUUsPerWS = round2(med(func(r fanoutRound) float64 { return r.CPUUsPerWS }))
	sum.Applied = rep.Workspaces
	for _, r := range rep.Rounds {
		sum.Applied = min(sum.Applied, r.Applied)
	}
	fmt.Fprintf(w, "fan-out: %d workspaces, %d NATS node(s), consumers' heartbeat %gs, %d cores, load %s\n", rep.Workspaces, rep.Nodes, rep.HeartbeatS, rep.Cores, rep.Load)
	if rep.Live {
		fmt.Fprintf(w, "  -fanout-live: the agent's live delivery (RePublish to core subscriptions, no standing consumer per agent)\n")
	}
	fmt.Fprintf(w, "  agents' consumers: %d created in %.1f s = %.0f/s (%d retries)\n", rep.ConsumersCreated, rep.ConsumerCreateS, rep.ConsumerCreatePerS, rep.ConsumerCreateRetry)
	fmt.Fprintf(w, "  server busy after the creation for %.1f s (until under 0.2 cores)\n", rep.ServerSettleS)
	fmt.Fprintf(w, "  server RSS: %d KiB before, %d KiB after = %.1f KiB per consumer; agents' process RSS %d KiB\n",
		rep.ServerRSSBeforeKiB, rep.ServerRSSAfterKiB, rep.ServerKiBPerConsumer, rep.AgentsRSSKiB)
	fmt.Fprintf(w, "  version 1 (create): written %.2f s, applied %.2f s\n", rep.InitialWrittenS, rep.InitialAppliedS)
	fmt.Fprintf(w, "  %-8s %10s %10s %10s %8s %14s %14s\n", "version", "written_s", "first_s", "applied_s", "applied", "cpu_us/ws", "server_cpu_s")
	for _, r := range rep.Rounds {
		fmt.Fprintf(w, "  %-8d %10.3f %10.3f %10.3f %8d %14.1f %14.2f\n", r.Version, r.WrittenS, r.FirstS, r.AppliedS, r.Applied, r.CPUUsPerWS, r.ServerCPUMs/1000)
	}
	judge := func(name string, got, limit float64, unit string) {
		verdict := "met"
		if got > limit || sum.Applied < rep.Workspaces {
			verdict = "NOT MET"
		}
		fmt.Fprintf(w, "  target %-28s %8.2f %s <= %g: %s\n", name, got, unit, limit, verdict)
	}
	if rep.Nodes == 1 {
		fmt.Fprintf(w, "  targets (issue 12, at N = 10,000 on one server; median round):\n")
		judge("every record written", sum.WrittenS, targetWrittenS, "s")
		judge("every agent applied", sum.AppliedS, targetAppliedS, "s")
		judge("service CPU per workspace", sum.CPUUsPerWS, targetCPUPerWSu, "µs")
	}
	if cfg.out != "" {
		b, err := json.MarshalIndent(struct {
			*fanoutReport
			Summary fanoutSummary `json:"summary"`
		}{rep, sum}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func round2(v float64) float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return -1
	}
	return math.Round(v*1000) / 1000
}

// cpuTime is this process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procRSSKiB is VmRSS of a process, 0 when it cannot be read.
func procRSSKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// natsProc is a nats-server running as a child process.
type natsProc struct {
	cmd     *exec.Cmd
	url     string
	profURL string // its CPU profile endpoint; "" when not asked for
}

func (p *natsProc) rssKiB() int64 { return procRSSKiB(p.cmd.Process.Pid) }

// cpu is the process's user plus system CPU time, from /proc.
func (p *natsProc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// settle waits until the server uses less than a fifth of a core over two
// seconds, at most max, and returns how long that took.
func (p *natsProc) settle(ctx context.Context, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < limit {
		before := p.cpu()
		if err := sleepCtx(ctx, 2*time.Second); err != nil {
			return 0, err
		}
		if p.cpu()-before < 400*time.Millisecond {
			break
		}
	}
	return time.Since(start), nil
}

// startNATSProcesses starts nodes nats-server processes (a cluster when
// more than one), each with JetStream in dir and the consumer limit lifted,
// and waits until JetStream answers.
func startNATSProcesses(ctx context.Context, bin string, nodes int, dir string, profile bool, cl *cleanups) ([]*natsProc, error) {
	ports, err := freePorts(2*nodes + 1)
	if err != nil {
		return nil, err
	}
	var routes []string
	for i := range nodes {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[nodes+i]))
	}
	var out []*natsProc
	for i := range nodes {
		conf := fmt.Sprintf("server_name: fan-%d\nlisten: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q\n  limits { default_max_consumers: -1 }\n}\n",
			i+1, ports[i], filepath.Join(dir, fmt.Sprintf("nats-%d", i+1)))
		if profile && i == 0 {
			conf += fmt.Sprintf("prof_port: %d\n", ports[2*nodes])
		}
		if nodes > 1 {
			conf += fmt.Sprintf("cluster {\n  name: fan\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n", ports[nodes+i], strings.Join(routes, ", "))
		}
		path := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("nats-%d.log", i+1)))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, "-c", path)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		cl.add(func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }() // owned by this clean-up
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			return logf.Close()
		})
		p := &natsProc{cmd: cmd, url: fmt.Sprintf("nats://127.0.0.1:%d", ports[i])}
		if profile && i == 0 {
			p.profURL = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile", ports[2*nodes])
		}
		out = append(out, p)
	}
	deadline := time.Now().Add(time.Minute)
	for _, p := range out {
		for {
			if err := jetStreamReady(ctx, p.url); err == nil {
				break
			} else if time.Now().After(deadline) {
				return nil, fmt.Errorf("nats-server at %s: JetStream not ready within a minute: %w (log in %s)", p.url, err, dir)
			}
			if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// jetStreamReady reports whether the server at url serves JetStream.
func jetStreamReady(ctx context.Context, url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(c)
	return err
}

// fanoutAgents is the agents' process as the bench drives it.
type fanoutAgents struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *bufio.Scanner
	created int
	createS float64
	retries int
}

type fanoutResult struct {
	count       int
	first, last time.Time
}

// startFanoutAgents writes the agents' file and starts this program again
// as the agents' process; it returns once every consumer is created.
func startFanoutAgents(ctx context.Context, dir string, af *fanoutAgentsFile, cl *cleanups) (*fanoutAgents, error) {
	path := filepath.Join(dir, "agents.json")
	b, err := json.Marshal(af)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-fanout-agents", path)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &fanoutAgents{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	cl.add(func() error {
		_ = in.Close() // the agents' process ends at EOF
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }() // owned by this clean-up
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		return nil
	})
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stop()
	line, err := a.line()
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Sscanf(line, "ready %d %f %d", &a.created, &a.createS, &a.retries); err != nil {
		return nil, fmt.Errorf("agents' process said %q", line)
	}
	return a, nil
}

func (a *fanoutAgents) line() (string, error) {
	if !a.out.Scan() {
		if err := a.out.Err(); err != nil {
			return "", fmt.Errorf("agents' process: %w", err)
		}
		return "", errors.New("agents' process ended")
	}
	return a.out.Text(), nil
}

// wait asks the agents' process when each agent applied version (or a
// later one), waiting until deadline at most.
func (a *fanoutAgents) wait(version uint64, deadline time.Time) (fanoutResult, error) {
	if _, err := fmt.Fprintf(a.in, "wait %d %d\n", version, deadline.UnixNano()); err != nil {
		return fanoutResult{}, fmt.Errorf("agents' process: %w", err)
	}
	line, err := a.line()
	if err != nil {
		return fanoutResult{}, err
	}
	var v uint64
	var r fanoutResult
	var first, last int64
	if _, err := fmt.Sscanf(line, "applied %d %d %d %d", &v, &r.count, &first, &last); err != nil || v != version {
		return r, fmt.Errorf("agents' process said %q", line)
	}
	r.first, r.last = time.Unix(0, first), time.Unix(0, last)
	return r, nil
}
