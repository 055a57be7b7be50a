package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// This file serves the agent's health and metrics over HTTP on
// Config.MetricsAddr:
//
//	/healthz  200 while the process serves (liveness)
//	/readyz   200 once the records are loaded and NATS is connected, else 503
//	/metrics  Prometheus text exposition format 0.0.4
//
// The format is written here by hand (a few counters, gauges and one
// histogram) rather than with prometheus/client_golang, which would bring a
// dozen modules for what is some forty lines of printing. Nothing served
// here is a value: secret names do not appear either, only counts, refusal
// and restart reasons, kernel states and modes.

// observer is the observability server's state.
type observer struct {
	mu   sync.Mutex
	addr string // the address it listens on, once listening
}

// MetricsAddr returns the address /metrics is served on once Run has
// started serving it (useful with port 0), and "" before or when off.
func (a *Agent) MetricsAddr() string {
	a.obs.mu.Lock()
	defer a.obs.mu.Unlock()
	return a.obs.addr
}

// errNotLoopback refuses a metrics address that other hosts could reach.
var errNotLoopback = errors.New("agent: metrics address is not loopback (set MetricsNonLoopback to allow it)")

// checkMetricsAddr accepts host:port where host is a loopback IP or
// "localhost", or any host when nonLoopback is set. An empty host (every
// interface) is not loopback. Empty addr: metrics off, accepted.
func checkMetricsAddr(addr string, nonLoopback bool) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("agent: metrics address: %w", err)
	}
	if nonLoopback {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: %q", errNotLoopback, addr)
	}
	return nil
}

// listenObserve opens Config.MetricsAddr, and checks once more that what it
// bound is loopback ("localhost" resolves through /etc/hosts).
func (a *Agent) listenObserve() (net.Listener, error) {
	l, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	if tcp, ok := l.Addr().(*net.TCPAddr); !a.cfg.MetricsNonLoopback && (!ok || !tcp.IP.IsLoopback()) {
		l.Close()
		return nil, fmt.Errorf("%w: %s bound %s", errNotLoopback, a.cfg.MetricsAddr, l.Addr())
	}
	a.obs.mu.Lock()
	a.obs.addr = l.Addr().String()
	a.obs.mu.Unlock()
	return l, nil
}

// serveObserve serves on l until ctx ends.
func (a *Agent) serveObserve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if why := a.notReady(); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, why+"\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		a.writeMetrics(bw)
		bw.Flush()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: a.log.Named("metrics").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	served, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-served: // Serve failed on its own
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	a.log.Info("serving health and metrics", "addr", l.Addr().String())
	err := srv.Serve(l)
	close(served)
	<-stopped
	a.obs.mu.Lock()
	a.obs.addr = ""
	a.obs.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// notReady says why the agent is not ready, or "" when it is.
func (a *Agent) notReady() string {
	var why []string
	if _, loaded := a.st.snapshot(); !loaded {
		why = append(why, "records not loaded")
	}
	if !a.cfg.Conn.IsConnected() {
		why = append(why, "NATS "+a.cfg.Conn.Status().String())
	}
	return strings.Join(why, "; ")
}

// kernelStates and kernelModes are always reported, zero or not, so that a
// dashboard sees every series from the first scrape.
var (
	kernelStates = []KernelState{StateConnecting, StateLive, StateStartOnly, StateUnreachable, StateRestarting}
	kernelModes  = []Mode{ModeSubshell, ModeControl, ModeShellIdle, ModeNone}
)

// writeMetrics writes every metric in the text exposition format 0.0.4.
func (a *Agent) writeMetrics(w io.Writer) {
	e := expo{w: w}
	d, loaded := a.st.snapshot()
	a.st.mu.Lock()
	applied := a.st.applied
	refused := make(map[string]uint64, len(a.st.refused))
	for k, v := range a.st.refused {
		refused[k] = v
	}
	a.st.mu.Unlock()
	m := a.metrics.snapshot()

	e.family("nbsecrets_records_applied_total", "counter", "Records verified, opened and applied.")
	e.sample("nbsecrets_records_applied_total", nil, float64(applied))
	e.family("nbsecrets_records_refused_total", "counter", "Records refused, by reason.")
	for _, r := range sortedKeys(refused) {
		e.sample("nbsecrets_records_refused_total", []string{"reason", r}, float64(refused[r]))
	}
	e.family("nbsecrets_records_loaded", "gauge", "1 once the first load of the records is applied.")
	e.sample("nbsecrets_records_loaded", nil, b2f(loaded))
	e.family("nbsecrets_secrets", "gauge", "Variables in the desired environment.")
	e.sample("nbsecrets_secrets", nil, float64(len(d.Env)))

	e.family("nbsecrets_reseeds_total", "counter", "Re-seeds applied to kernels.")
	e.sample("nbsecrets_reseeds_total", nil, float64(m.reseeds))
	e.family("nbsecrets_reseed_failures_total", "counter", "Re-seeds that failed (the worker tries again).")
	e.sample("nbsecrets_reseed_failures_total", nil, float64(m.reseedErrors))
	e.family("nbsecrets_restarts_total", "counter", "Kernel restarts, by reason.")
	for _, r := range sortedKeys(m.restarts) {
		e.sample("nbsecrets_restarts_total", []string{"reason", r}, float64(m.restarts[r]))
	}

	states := map[KernelState]int{}
	modes := map[Mode]int{}
	for _, k := range a.kernels.statuses() {
		states[k.State]++
		if k.Mode != "" {
			modes[k.Mode]++
		}
	}
	e.family("nbsecrets_kernels", "gauge", "Kernels served, by state.")
	for _, s := range withExtra(kernelStates, states) {
		e.sample("nbsecrets_kernels", []string{"state", string(s)}, float64(states[s]))
	}
	e.family("nbsecrets_kernels_by_mode", "gauge", "Connected kernels, by how they are served (live:* or start-only).")
	for _, md := range withExtra(kernelModes, modes) {
		e.sample("nbsecrets_kernels_by_mode", []string{"mode", string(md)}, float64(modes[md]))
	}

	e.family("nbsecrets_nats_connected", "gauge", "1 while the NATS connection is up.")
	e.sample("nbsecrets_nats_connected", nil, b2f(a.cfg.Conn.IsConnected()))
	e.family("nbsecrets_nats_reconnects_total", "counter", "NATS reconnections.")
	e.sample("nbsecrets_nats_reconnects_total", nil, float64(a.cfg.Conn.Stats().Reconnects))

	const h = "nbsecrets_change_to_applied_seconds"
	e.family(h, "histogram", "Time from a change stored in JetStream to its re-seed in a kernel.")
	for i, b := range latencyBuckets {
		e.sample(h+"_bucket", []string{"le", strconv.FormatFloat(b, 'g', -1, 64)}, float64(m.changeToApplied[i]))
	}
	e.sample(h+"_bucket", []string{"le", "+Inf"}, float64(m.changeToApplied[len(latencyBuckets)]))
	e.sample(h+"_sum", nil, m.latencySum)
	e.sample(h+"_count", nil, float64(m.latencyCount))

	e.family("nbsecrets_start_time_seconds", "gauge", "When the agent started, in seconds since the Unix epoch.")
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	e.sample("nbsecrets_start_time_seconds", nil, float64(started.UnixMilli())/1000)
}

// withExtra is known followed by the other keys of seen, sorted: a state
// or mode added later still shows.
func withExtra[K ~string](known []K, seen map[K]int) []K {
	out := append([]K(nil), known...)
	var extra []K
	for k := range seen {
		found := false
		for _, kk := range known {
			found = found || kk == k
		}
		if !found {
			extra = append(extra, k)
		}
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	return append(out, extra...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// expo writes the Prometheus text exposition format, version 0.0.4.
type expo struct{ w io.Writer }

// family writes the # HELP and # TYPE lines of a metric family.
func (e expo) family(name, typ, help string) {
	fmt.Fprintf(e.w, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

// sample writes one sample; labels are name, value pairs.
func (e expo) sample(name string, labels []string, v float64) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(formatValue(v))
	b.WriteByte('\n')
	io.WriteString(e.w, b.String())
}

// escapeLabel escapes a label value: backslash, double quote, line feed.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// escapeHelp escapes a HELP text: backslash and line feed.
func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
