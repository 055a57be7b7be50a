package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nbsecrets/nbsecrets/agent"
)

// runStatus is `nbsecrets status`: what the agent holds, never a value.
func runStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "status", "[--state-dir DIR | --socket PATH] [--json]")
	stateDir := stateDirFlag(fs)
	socket := fs.String("socket", "", "the agent's socket (default: <state-dir>/agent.sock, or $NBSECRETS_SOCKET)")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	sock := *socket
	if sock == "" {
		sock = envOr("NBSECRETS_SOCKET", filepath.Join(*stateDir, agentSockName))
	}
	st, raw, err := fetchStatus(ctx, sock)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := env.stdout.Write(raw)
		return err
	}
	printStatus(env.stdout, st)
	return nil
}

// unixClient is an HTTP client that talks to the agent's socket.
func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
}

func fetchStatus(ctx context.Context, sock string) (*agent.Status, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	resp, err := unixClient(sock).Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("agent at %s not reachable (is 'nbsecrets dev' or 'nbsecrets agent' running?): %w", sock, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("reading status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var st agent.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("decoding status: %w", err)
	}
	return &st, raw, nil
}

func printStatus(w io.Writer, st *agent.Status) {
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Millisecond).String() + " ago"
	}
	list := func(l []string) string {
		if len(l) == 0 {
			return "-"
		}
		return strings.Join(l, ",")
	}
	fmt.Fprintf(w, "workspace  %s (owner %s; projects %s; communities %s)\nNATS       %s %s (delivery %s)\nlast sync  %s (loaded: %v)\nrecords    %d applied",
		st.Workspace, st.Owner, list(st.Projects), list(st.Communities), st.NATS, st.NATSServer, cmp.Or(st.Delivery, "-"), ago(st.LastSync), st.Loaded, st.RecordsApplied)
	if len(st.Refused) > 0 {
		var parts []string
		for _, r := range sortedMapKeys(st.Refused) {
			parts = append(parts, fmt.Sprintf("%s: %d", r, st.Refused[r]))
		}
		fmt.Fprintf(w, ", refused: %s", strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "\nre-seeds   %d (%d failed)\nkernels    %s\n\n", st.Reseeds, st.ReseedErrors, kernelSummary(st.Kernels))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SECRET\tVERSION\tSCOPE\tNOTE")
	if len(st.Secrets) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t")
	}
	for _, s := range st.Secrets {
		note := ""
		if s.ShadowedBy != "" {
			note = "shadowed by " + s.ShadowedBy + " (not in kernels)"
		}
		if s.OverBudget {
			note = "over the workspace's budget (not in kernels)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", s.Name, s.Version, s.Scope, note)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tSTATE\tLANGUAGE\tSERVED\tHOLDS\tLAST RE-SEED")
	if len(st.Kernels) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t")
	}
	for _, k := range st.Kernels {
		var holds []string
		for _, n := range sortedMapKeys(k.Holds) {
			holds = append(holds, fmt.Sprintf("%s@v%d", n, k.Holds[n].Version))
		}
		h := strings.Join(holds, " ")
		if h == "" {
			h = "-"
		}
		state := string(k.State)
		if k.LastError != "" && k.State != agent.StateLive {
			state += " (" + k.LastError + ")"
		}
		if k.Busy {
			state += ", cell running"
		}
		lang := k.Language
		if lang == "" {
			lang = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, state, lang, servedAs(k.Mode), h, ago(k.LastReseed))
	}
	tw.Flush()
}

// servedAs says how a kernel gets changes: live (and over what) or only
// when it starts. The mode's own name follows in parentheses, as in --json.
func servedAs(m agent.Mode) string {
	switch m {
	case agent.ModeQuiet:
		return "live, quiet channel (live:quiet)"
	case agent.ModeControlWaiting, agent.ModeSubshellWaiting:
		return "live, Jupyter channel until the running cell ends (" + string(m) + ")"
	case agent.ModeSubshell:
		return "live, subshell (live:subshell)"
	case agent.ModeControl:
		return "live, control channel (live:control)"
	case agent.ModeShellIdle:
		return "live, when idle (live:shell-idle)"
	case agent.ModeNone:
		return "at start only (start-only)"
	case "":
		return "- (not connected yet)"
	}
	if strings.HasPrefix(string(m), "live:") {
		return "live (" + string(m) + ")"
	}
	return string(m)
}

// kernelSummary counts the kernels served live and at start only.
func kernelSummary(ks []agent.KernelStatus) string {
	var live, startOnly, other int
	for _, k := range ks {
		switch {
		case strings.HasPrefix(string(k.Mode), "live:"):
			live++
		case k.Mode == agent.ModeNone:
			startOnly++
		default:
			other++
		}
	}
	s := fmt.Sprintf("%d: %d live, %d at start only", len(ks), live, startOnly)
	if other > 0 {
		s += fmt.Sprintf(", %d not connected yet", other)
	}
	return s
}

func sortedMapKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
