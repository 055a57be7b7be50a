package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The targets of issue 3.
const (
	targetIdleP50 = 5 * time.Millisecond
	targetIdleP99 = 15 * time.Millisecond
	targetBusyP99 = 20 * time.Millisecond
	targetRSS     = 20_000_000 // bytes: 20 MB, decimal, the stricter reading
)

// report is what the bench found; it is written as JSON to -out.
type report struct {
	Started  time.Time     `json:"started"`
	Duration float64       `json:"duration_s"`
	Machine  machine       `json:"machine"`
	Config   configReport  `json:"config"`
	Rows     []rowReport   `json:"rows"`
	Ratios   ratios        `json:"ratios"`
	Agent    agentReport   `json:"agent"`
	Targets  []target      `json:"targets"`
	Detail   detailReport  `json:"detail"`
	Policy   *policyReport `json:"restart_by_policy,omitempty"`
	Jupyter  *policyReport `json:"restart_by_policy_through_jupyter_server,omitempty"`
	IOPub    *iopubCount   `json:"agent_iopub,omitempty"`
	Notes    []string      `json:"notes,omitempty"`
	raw      *measurements // what the rows were made from
}

type machine struct {
	Cores         int       `json:"cores"`
	GoVersion     string    `json:"go_version"`
	GOOS          string    `json:"goos"`
	GOARCH        string    `json:"goarch"`
	CPU           string    `json:"cpu_model,omitempty"`
	Kernel        string    `json:"os_kernel,omitempty"`
	Python        string    `json:"python"`
	IPyKernel     string    `json:"ipykernel_version"`
	IPython       string    `json:"ipython_version"`
	JupyterClient string    `json:"jupyter_client_version"`
	JupyterServer string    `json:"jupyter_server_version,omitempty"`
	SwitchInt     float64   `json:"python_switch_interval_ms"`
	LoadStart     string    `json:"loadavg_start,omitempty"`
	LoadEnd       string    `json:"loadavg_end,omitempty"`
	TempDirFS     string    `json:"temp_dir_fs,omitempty"`
	Time          time.Time `json:"time"`
}

type configReport struct {
	Samples         int     `json:"samples"`
	Restarts        int     `json:"restarts"`
	Warmup          int     `json:"warmup"`
	PauseMS         float64 `json:"pause_ms"`
	TimeoutMS       float64 `json:"timeout_ms"`
	PollMS          float64 `json:"poll_interval_ms"`
	AgentReseedMode string  `json:"agent_reseed_mode"`
}

type rowReport struct {
	Name    string    `json:"name"`
	N       int       `json:"n"`
	Lost    int       `json:"lost"`
	P50     float64   `json:"p50_ms,omitempty"`
	P95     float64   `json:"p95_ms,omitempty"`
	P99     float64   `json:"p99_ms,omitempty"`
	Max     float64   `json:"max_ms,omitempty"`
	Skipped string    `json:"skipped,omitempty"`
	Failed  string    `json:"failed,omitempty"`
	Samples []float64 `json:"samples_ms"`
}

type ratios struct {
	BaselineOverIdle float64 `json:"baseline_p50_over_live_idle_p50,omitempty"`
	BaselineOverBusy float64 `json:"baseline_p50_over_live_busy_p50,omitempty"`
}

type agentReport struct {
	PID        int   `json:"pid"`
	VmRSS      int64 `json:"vm_rss_bytes"`
	VmHWM      int64 `json:"vm_hwm_bytes"`
	VmRSSStart int64 `json:"vm_rss_bytes_after_start"`
}

type target struct {
	Name  string  `json:"name"`
	Limit float64 `json:"limit"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Met   bool    `json:"met"`
	Why   string  `json:"why_not,omitempty"`
}

// policyReport describes a row whose restarts the agent does (restart by
// agent policy, and through Jupyter Server): its agent's flags, how the
// restart is done, who restarts the kernel, and the row's p50 less the
// bare restart's (row 3) in the same run. No target.
type policyReport struct {
	AgentFlags    []string `json:"agent_flags"`
	AgentPID      int      `json:"agent_pid,omitempty"`
	Mechanism     string   `json:"mechanism"`
	KernelManager string   `json:"kernel_manager"`
	// P50MinusBaseline is absent when either row has no samples.
	P50MinusBaseline *float64 `json:"p50_minus_baseline_p50_ms,omitempty"`
}

const (
	policyMechanism     = "the agent sends shutdown_request (restart: true) on the kernel's control channel (no --jupyter-url) and relies on the kernel's manager to start it again"
	policyKernelManager = "the bench: it starts the kernel again through the injector, on the same connection file (same ports), the moment its process exits; jupyter_client's KernelRestarter polls every 3 s and so adds up to 3 s to this row; Jupyter Server's REST restart (--jupyter-url) does not poll"

	jupyterMechanism     = "the agent, given --jupyter-url and --jupyter-token-file, calls the Jupyter Server's REST API: GET /api/kernels (is the kernel managed?), then POST /api/kernels/{id}/restart"
	jupyterKernelManager = "a real Jupyter Server started by the bench (its kernel started with POST /api/kernels): on the restart call it sends the kernel shutdown_request, checks every 0.1 s whether the process has exited (jupyter_client's finish_shutdown), then runs the wrapped kernelspec argv (the injector) again on the same connection file (same ports), and answers the call; no KernelRestarter polling"
)

// distribution is p50/p99 of a breakdown step, in ms.
type distribution struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms,omitempty"`
	P99 float64 `json:"p99_ms,omitempty"`
	Max float64 `json:"max_ms,omitempty"`
}

func distOf(d []time.Duration) distribution {
	s := summarize(d)
	return distribution{N: s.N, P50: ms(s.P50), P99: ms(s.P99), Max: ms(s.Max)}
}

// liveDetail splits a live sample: the Update call, Update return to
// putenv in the kernel, putenv to the observer's packet.
type liveDetail struct {
	UpdateCall   distribution `json:"update_call"`
	Published    distribution `json:"update_return_to_record_published"`
	ToPutenv     distribution `json:"update_return_to_putenv"`
	PutenvToPoll distribution `json:"putenv_to_observer"`
	NoPutenv     int          `json:"samples_without_putenv_time,omitempty"`
}

// restartDetail splits a restart sample, each step from Update's return.
// AgentRestart is the agent-restart rows' only: when the agent began its
// restart (its status's last_restart, wall clock). Relaunched is the
// restart-by-policy row's only: when the bench had started the new
// process; there Killed is when the old process exited on the agent's
// shutdown_request. RESTReturned is the through-Jupyter-Server row's only:
// when the agent's restart call to the server returned (its log, wall
// clock); there Killed is when the old process, shut down by the server,
// exited (its pidfd).
type restartDetail struct {
	UpdateCall   distribution `json:"update_call"`
	AgentRestart distribution `json:"to_agent_restart_began,omitzero"`
	Killed       distribution `json:"to_old_kernel_reaped"`
	Relaunched   distribution `json:"to_relaunched,omitzero"`
	RESTReturned distribution `json:"to_rest_call_returned,omitzero"`
	Dialled      distribution `json:"to_ports_accepting"`
	Ready        distribution `json:"to_kernel_info_and_iopub"`
	Output       distribution `json:"to_output"`
	FromStartEnv int          `json:"value_in_start_env"`
	ExtraCells   int          `json:"extra_cells"`
	PortRetries  int          `json:"port_retries"`
}

type detailReport struct {
	LiveIdle        liveDetail    `json:"live_idle"`
	LiveWaiting     liveDetail    `json:"live_waiting"`
	LiveBusy        liveDetail    `json:"live_busy"`
	LiveBusyPolled  liveDetail    `json:"live_busy_polled"`
	RestartBaseline restartDetail `json:"restart_baseline"`
	RestartInjector restartDetail `json:"restart_injector"`
	RestartPolicy   restartDetail `json:"restart_policy"`
	RestartJupyter  restartDetail `json:"restart_policy_jupyter_server"`
}

// measurements are the raw results of a run.
type measurements struct {
	idle, waiting      *liveRow
	busy               *liveRow // the GIL-holding cell observing the value itself
	busyPolled         *liveRow // the same loop, a second thread polling: no target
	baseline, injector *restartRow
	// policy is the restart-by-policy row, by the agent of policyPID run
	// with policyFlags.
	policy      *restartRow
	policyFlags []string
	policyPID   int
	// jupyter is the restart-through-Jupyter-Server row, by the agent of
	// jupyterPID run with jupyterFlags, the server's jupyter_server being
	// jupyterServerVersion.
	jupyter              *restartRow
	jupyterFlags         []string
	jupyterPID           int
	jupyterServerVersion string
	// execDirect and execInject are starts of true, directly and through
	// the injector.
	execDirect, execInject []time.Duration
	mem, memStart          memory
	agentPID               int
	versions               *versions
	mode                   string
	loadStart, tempFS      string
	iopub                  *iopubCount // the agent's iopub messages on the live kernel
}

const (
	rowIdle       = "live, idle kernel"
	rowWaiting    = "live, cell waiting"
	rowBusy       = "live, cell computing"
	rowBusyPolled = "live, cell computing, seen by a second thread"
	rowBaseline   = "restart (baseline)"
	rowInjector   = "restart via injector"
	rowPolicy     = "restart by agent policy"
	rowJupyter    = "restart by agent policy through Jupyter Server"
	rowExecDirect = "start true, direct"
	rowExecInject = "start true, via inject"
)

// build turns measurements into the report: rows, ratios, targets.
func build(cfg *config, m *measurements, started time.Time) *report {
	r := &report{Started: started, raw: m}
	r.Machine = machineInfo()
	r.Machine.Time = time.Now()
	r.Machine.LoadStart, r.Machine.LoadEnd, r.Machine.TempDirFS = m.loadStart, loadavg(), m.tempFS
	r.Machine.JupyterServer = m.jupyterServerVersion
	if v := m.versions; v != nil {
		r.Machine.Python, r.Machine.IPyKernel, r.Machine.IPython, r.Machine.JupyterClient = v.Python, v.IPyKernel, v.IPython, v.JupyterClient
		r.Machine.SwitchInt = v.SwitchInterval * 1000
	}
	r.Config = configReport{Samples: cfg.n, Restarts: cfg.restarts, Warmup: cfg.warmup, PauseMS: ms(cfg.pause),
		TimeoutMS: ms(cfg.timeout), PollMS: 0.2, AgentReseedMode: m.mode}

	idle := liveRowReport(rowIdle, m.idle)
	waiting := liveRowReport(rowWaiting, m.waiting)
	busy := liveRowReport(rowBusy, m.busy)
	busyPolled := liveRowReport(rowBusyPolled, m.busyPolled)
	base := restartRowReport(rowBaseline, m.baseline)
	inj := restartRowReport(rowInjector, m.injector)
	pol := restartRowReport(rowPolicy, m.policy)
	jup := restartRowReport(rowJupyter, m.jupyter)
	execDirect := rowReport{Name: rowExecDirect, Samples: []float64{}}
	fill(&execDirect, m.execDirect)
	execInject := rowReport{Name: rowExecInject, Samples: []float64{}}
	fill(&execInject, m.execInject)
	r.Rows = []rowReport{idle, waiting, busy, busyPolled, base, inj, pol, jup, execDirect, execInject}
	r.Detail = detailReport{LiveIdle: liveDetailOf(m.idle), LiveWaiting: liveDetailOf(m.waiting), LiveBusy: liveDetailOf(m.busy), LiveBusyPolled: liveDetailOf(m.busyPolled),
		RestartBaseline: restartDetailOf(m.baseline), RestartInjector: restartDetailOf(m.injector),
		RestartPolicy: restartDetailOf(m.policy), RestartJupyter: restartDetailOf(m.jupyter)}
	if m.policy != nil {
		r.Policy = agentRestartReport(m.policyFlags, m.policyPID, policyMechanism, policyKernelManager, base, pol)
	}
	if m.jupyter != nil {
		r.Jupyter = agentRestartReport(m.jupyterFlags, m.jupyterPID, jupyterMechanism, jupyterKernelManager, base, jup)
	}

	if base.N > 0 && idle.N > 0 && idle.P50 > 0 {
		r.Ratios.BaselineOverIdle = base.P50 / idle.P50
	}
	if base.N > 0 && busy.N > 0 && busy.P50 > 0 {
		r.Ratios.BaselineOverBusy = base.P50 / busy.P50
	}
	r.Agent = agentReport{PID: m.agentPID, VmRSS: m.mem.RSS, VmHWM: m.mem.HWM, VmRSSStart: m.memStart.RSS}
	r.Targets = append(targets(idle, waiting, busy, m.mem), overheadTargets(base, inj, execDirect, execInject)...)
	r.Targets = append(r.Targets, quietTargets(idle, waiting, busy, m.iopub)...)
	r.IOPub = m.iopub
	if la := strings.Fields(m.loadStart); len(la) > 0 {
		if l, err := strconv.ParseFloat(la[0], 64); err == nil && l >= float64(r.Machine.Cores) {
			r.Notes = append(r.Notes, fmt.Sprintf("the machine was busy when the bench started: load average %.2f on %d cores; other processes competed for the CPUs", l, r.Machine.Cores))
		}
	}
	return r
}

// agentRestartReport describes a row whose restarts the agent does, with
// its p50 less the baseline's when both have samples.
func agentRestartReport(flags []string, pid int, mechanism, manager string, base, row rowReport) *policyReport {
	p := &policyReport{AgentFlags: flags, AgentPID: pid, Mechanism: mechanism, KernelManager: manager}
	if base.N > 0 && row.N > 0 {
		d := row.P50 - base.P50
		p.P50MinusBaseline = &d
	}
	return p
}

// row returns the row named name (a zero row if there is none).
func (r *report) row(name string) rowReport {
	for _, row := range r.Rows {
		if row.Name == name {
			return row
		}
	}
	return rowReport{}
}

func liveRowReport(name string, lr *liveRow) rowReport {
	row := rowReport{Name: name, Samples: []float64{}}
	if lr == nil {
		row.Failed = "not measured"
		return row
	}
	fill(&row, lr.latencies())
	row.Lost = lr.Lost
	return row
}

func restartRowReport(name string, rr *restartRow) rowReport {
	row := rowReport{Name: name, Samples: []float64{}}
	if rr == nil {
		row.Failed = "not measured"
		return row
	}
	fill(&row, rr.latencies())
	row.Skipped, row.Failed = rr.Skipped, rr.Failed
	return row
}

func fill(row *rowReport, d []time.Duration) {
	s := summarize(d)
	row.N, row.P50, row.P95, row.P99, row.Max = s.N, ms(s.P50), ms(s.P95), ms(s.P99), ms(s.Max)
	for _, v := range d {
		row.Samples = append(row.Samples, ms(v))
	}
}

func liveDetailOf(lr *liveRow) liveDetail {
	var d liveDetail
	if lr == nil {
		return d
	}
	var upd, pubd, put, poll []time.Duration
	for _, s := range lr.Samples {
		upd = append(upd, s.Update)
		if s.GotPub {
			pubd = append(pubd, s.Published)
		}
		if s.GotPut {
			put = append(put, s.Putenv)
			poll = append(poll, s.Latency-s.Putenv)
		} else {
			d.NoPutenv++
		}
	}
	d.UpdateCall, d.Published, d.ToPutenv, d.PutenvToPoll = distOf(upd), distOf(pubd), distOf(put), distOf(poll)
	return d
}

func restartDetailOf(rr *restartRow) restartDetail {
	var d restartDetail
	if rr == nil {
		return d
	}
	var upd, agentAt, kill, relaunch, rest, dial, ready, out []time.Duration
	for _, s := range rr.Samples {
		upd, kill, dial = append(upd, s.Update), append(kill, s.Killed), append(dial, s.Dialled)
		ready, out = append(ready, s.Ready), append(out, s.Latency)
		if s.ByAgent && s.GotAgent {
			agentAt = append(agentAt, s.AgentRestart)
		}
		switch {
		case s.ByAgent && s.ViaServer && s.GotREST:
			rest = append(rest, s.RESTReturned)
		case s.ByAgent && !s.ViaServer:
			relaunch = append(relaunch, s.Relaunched)
		}
		if s.FromStart {
			d.FromStartEnv++
		}
		d.ExtraCells += s.Cells - 1
		d.PortRetries += s.PortRetries
	}
	d.UpdateCall, d.Killed, d.Dialled, d.Ready, d.Output = distOf(upd), distOf(kill), distOf(dial), distOf(ready), distOf(out)
	d.AgentRestart, d.Relaunched, d.RESTReturned = distOf(agentAt), distOf(relaunch), distOf(rest)
	return d
}

// latencyTarget judges a latency figure of row against limit; a row with
// lost samples or none at all does not meet it.
func latencyTarget(name string, row rowReport, value float64, limit time.Duration) target {
	t := target{Name: name, Limit: ms(limit), Value: value, Unit: "ms"}
	switch {
	case row.N == 0:
		t.Why = "no samples"
	case row.Lost > 0:
		t.Why = fmt.Sprintf("%d samples lost", row.Lost)
	default:
		t.Met = value <= ms(limit)
	}
	return t
}

// targets judges the rows against issue 3's targets. A row with lost
// samples or none at all does not meet its targets.
func targets(idle, waiting, busy rowReport, mem memory) []target {
	rss := target{Name: "agent VmRSS <= 20 MB", Limit: targetRSS / 1e6, Value: float64(mem.RSS) / 1e6, Unit: "MB"}
	if mem.RSS == 0 {
		rss.Why = "not measured"
	} else {
		rss.Met = mem.RSS <= targetRSS
	}
	return []target{
		latencyTarget("live idle p50 <= 5 ms", idle, idle.P50, targetIdleP50),
		latencyTarget("live idle p99 <= 15 ms", idle, idle.P99, targetIdleP99),
		latencyTarget("live, cell waiting p99 <= 20 ms", waiting, waiting.P99, targetBusyP99),
		latencyTarget("live, cell computing p99 <= 20 ms", busy, busy.P99, targetBusyP99),
		rss,
	}
}

// overheadTargets judges issue 5's targets: the restart path (restart
// through the injector) within 100 ms of a bare restart, and the injector's
// own overhead at most 10 ms, both as differences of medians.
func overheadTargets(base, inj, direct, via rowReport) []target {
	diff := func(name string, a, b rowReport, limit float64) target {
		t := target{Name: name, Limit: limit, Value: b.P50 - a.P50, Unit: "ms"}
		switch {
		case a.N == 0 || b.N == 0:
			t.Why = "no samples"
		case a.Lost > 0 || b.Lost > 0:
			t.Why = "samples lost"
		default:
			t.Met = t.Value <= limit
		}
		return t
	}
	return []target{
		diff("restart via injector - bare restart, p50 <= 100 ms", base, inj, 100),
		diff("injector overhead (start via inject - direct), p50 <= 10 ms", direct, via, 10),
	}
}

// writeTable prints the report for people.
func (r *report) writeTable(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "nbsecrets-bench: %d cores, %s, Python %s, ipykernel %s, agent re-seed mode %s\n",
		m.Cores, m.GoVersion, m.Python, m.IPyKernel, r.Config.AgentReseedMode)
	fmt.Fprintf(w, "load average at start %s, at end %s\n\n", m.LoadStart, m.LoadEnd)
	width := 22
	for _, row := range r.Rows {
		width = max(width, len(row.Name))
	}
	fmt.Fprintf(w, "%-*s %5s %5s %10s %10s %10s %10s\n", width, "latency (ms)", "n", "lost", "p50", "p95", "p99", "max")
	for _, row := range r.Rows {
		switch {
		case row.Skipped != "":
			fmt.Fprintf(w, "%-*s skipped: %s\n", width, row.Name, row.Skipped)
			continue
		case row.N == 0:
			fmt.Fprintf(w, "%-*s failed: %s\n", width, row.Name, row.Failed)
			continue
		}
		fmt.Fprintf(w, "%-*s %5d %5d %10.2f %10.2f %10.2f %10.2f\n", width, row.Name, row.N, row.Lost, row.P50, row.P95, row.P99, row.Max)
		if row.Failed != "" {
			fmt.Fprintf(w, "%-*s   (stopped early: %s)\n", width, "", row.Failed)
		}
	}
	fmt.Fprintln(w)
	ratio := func(name string, v float64) {
		if v == 0 {
			fmt.Fprintf(w, "%s: n/a\n", name)
			return
		}
		fmt.Fprintf(w, "%s: %.0fx\n", name, v)
	}
	ratio("restart baseline p50 / live idle p50", r.Ratios.BaselineOverIdle)
	ratio("restart baseline p50 / live, cell computing p50", r.Ratios.BaselineOverBusy)
	agentRestart := func(name string, p *policyReport, agentName, how string) {
		if p == nil {
			return
		}
		if p.P50MinusBaseline != nil {
			fmt.Fprintf(w, "%s p50 - restart baseline p50: %+.1f ms (reported, no target)\n", name, *p.P50MinusBaseline)
		} else {
			fmt.Fprintf(w, "%s p50 - restart baseline p50: n/a\n", name)
		}
		if p.AgentPID != 0 {
			fmt.Fprintf(w, "  %s (pid %d): %s\n", agentName, p.AgentPID, strings.Join(p.AgentFlags, " "))
		}
		fmt.Fprintf(w, "  %s\n", how)
	}
	agentRestart(rowPolicy, r.Policy, "policy agent",
		"the bench restarts the kernel the moment it exits; jupyter_client's KernelRestarter polls every 3 s and adds up to 3 s (Jupyter Server's REST restart does not)")
	server := "jupyter_server"
	if m.JupyterServer != "" {
		server += " " + m.JupyterServer
	}
	agentRestart(rowJupyter, r.Jupyter, "its agent",
		"the agent calls POST /api/kernels/{id}/restart on "+server+", which shuts the kernel down (checking every 0.1 s that it exited) and starts the kernelspec argv (the injector) again on the same ports")
	fmt.Fprintf(w, "agent (pid %d) after the run: VmRSS %.1f MB, VmHWM %.1f MB (1 MB = 10^6 bytes); VmRSS after start %.1f MB\n\n",
		r.Agent.PID, float64(r.Agent.VmRSS)/1e6, float64(r.Agent.VmHWM)/1e6, float64(r.Agent.VmRSSStart)/1e6)
	fmt.Fprintln(w, "targets:")
	for _, t := range r.Targets {
		verdict := "met"
		if !t.Met {
			verdict = "NOT MET"
			if t.Why != "" {
				verdict += " (" + t.Why + ")"
			}
		}
		fmt.Fprintf(w, "  %-26s %8.2f %-3s %s\n", t.Name, t.Value, t.Unit, verdict)
	}
	if io := r.IOPub; io != nil {
		fmt.Fprintf(w, "agent's iopub messages on the live kernel over %d changes and %.0f s idle: %d %v\n", io.Changes, io.IdleS, io.Messages, io.ByType)
	}
	fmt.Fprintln(w, "\nwhere the time goes (p50 / p99 ms):")
	ld := func(name string, d liveDetail) {
		fmt.Fprintf(w, "  %s: Update call %.2f / %.2f; from Update return: record published %.2f / %.2f, putenv in kernel %.2f / %.2f; putenv -> seen %.2f / %.2f\n",
			name, d.UpdateCall.P50, d.UpdateCall.P99, d.Published.P50, d.Published.P99, d.ToPutenv.P50, d.ToPutenv.P99, d.PutenvToPoll.P50, d.PutenvToPoll.P99)
		if d.NoPutenv > 0 {
			fmt.Fprintf(w, "    (%d samples without the putenv's time)\n", d.NoPutenv)
		}
	}
	ld("live idle", r.Detail.LiveIdle)
	ld("live waiting", r.Detail.LiveWaiting)
	ld("live busy (the cell sees it)", r.Detail.LiveBusy)
	ld("live busy (a second thread sees it)", r.Detail.LiveBusyPolled)
	rd := func(name string, d restartDetail, n int) {
		if n == 0 {
			return
		}
		fmt.Fprintf(w, "  %s, from Update return: old kernel reaped %.1f / %.1f; ports accepting %.1f / %.1f; ready %.1f / %.1f; output %.1f / %.1f\n",
			name, d.Killed.P50, d.Killed.P99, d.Dialled.P50, d.Dialled.P99, d.Ready.P50, d.Ready.P99, d.Output.P50, d.Output.P99)
		fmt.Fprintf(w, "    value in the start environment in %d of %d; extra cells %d; port retries %d\n", d.FromStartEnv, n, d.ExtraCells, d.PortRetries)
	}
	rd("restart baseline", r.Detail.RestartBaseline, r.row(rowBaseline).N)
	rd("restart via injector", r.Detail.RestartInjector, r.row(rowInjector).N)
	if d, n := r.Detail.RestartPolicy, r.row(rowPolicy).N; n > 0 {
		fmt.Fprintf(w, "  restart by agent policy, from Update return: agent restart began %.1f / %.1f (n %d); old kernel exited %.1f / %.1f; relaunched %.1f / %.1f; ports accepting %.1f / %.1f; ready %.1f / %.1f; output %.1f / %.1f\n",
			d.AgentRestart.P50, d.AgentRestart.P99, d.AgentRestart.N, d.Killed.P50, d.Killed.P99, d.Relaunched.P50, d.Relaunched.P99,
			d.Dialled.P50, d.Dialled.P99, d.Ready.P50, d.Ready.P99, d.Output.P50, d.Output.P99)
		fmt.Fprintf(w, "    value in the start environment in %d of %d; extra cells %d; port retries %d\n", d.FromStartEnv, n, d.ExtraCells, d.PortRetries)
	}
	if d, n := r.Detail.RestartJupyter, r.row(rowJupyter).N; n > 0 {
		fmt.Fprintf(w, "  %s, from Update return: agent restart began %.1f / %.1f (n %d); old kernel exited %.1f / %.1f; REST call returned %.1f / %.1f (n %d); ports accepting %.1f / %.1f; ready %.1f / %.1f; output %.1f / %.1f\n",
			rowJupyter, d.AgentRestart.P50, d.AgentRestart.P99, d.AgentRestart.N, d.Killed.P50, d.Killed.P99, d.RESTReturned.P50, d.RESTReturned.P99, d.RESTReturned.N,
			d.Dialled.P50, d.Dialled.P99, d.Ready.P50, d.Ready.P99, d.Output.P50, d.Output.P99)
		fmt.Fprintf(w, "    value in the start environment in %d of %d; extra cells %d\n", d.FromStartEnv, n, d.ExtraCells)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// writeJSON writes the report to path (0644; it holds no secret).
func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// machineInfo is what can be read of the machine without asking a kernel.
func machineInfo() machine {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// fsType names the file system that holds dir (the JetStream store and
// the kernels' files live there).
func fsType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return ""
	}
	names := map[int64]string{0x01021994: "tmpfs", 0xef53: "ext4", 0x794c7630: "overlayfs", 0x58465342: "xfs", 0x9123683e: "btrfs"}
	if n, ok := names[int64(st.Type)]; ok {
		return n
	}
	return fmt.Sprintf("fs type %#x", st.Type)
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
