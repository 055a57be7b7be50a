package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

func withMetrics(c *Config) { c.MetricsAddr = "127.0.0.1:0" }

// metricsURL waits until the agent serves metrics and returns its base URL.
func metricsURL(t *testing.T, a *Agent) string {
	t.Helper()
	var addr string
	waitFor(t, 10*time.Second, func() error {
		if addr = a.MetricsAddr(); addr == "" {
			return errors.New("metrics not served yet")
		}
		return nil
	})
	return "http://" + addr
}

func get(url string) (int, string, http.Header, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// scrape fetches /metrics and parses it strictly.
func scrape(t *testing.T, base string) (exposition, string) {
	t.Helper()
	code, body, hdr, err := get(base + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	if ct := hdr.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	e, err := parseExposition(body)
	if err != nil {
		t.Fatalf("/metrics is not valid text format 0.0.4: %v\n%s", err, body)
	}
	return e, body
}

// exposition is a parsed scrape: series ("name{k="v",…}", labels sorted)
// to value, and family to type.
type exposition struct {
	values map[string]float64
	types  map[string]string
}

// get returns a series' value; it fails the test if the series is absent.
func (e exposition) get(t *testing.T, series string) float64 {
	t.Helper()
	v, ok := e.values[series]
	if !ok {
		t.Fatalf("no series %s", series)
	}
	return v
}

var (
	metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// parseExposition is a strict parser of the Prometheus text format 0.0.4
// for what the agent writes: every sample belongs to a family announced by
// # HELP and # TYPE (once each, before its samples), a family's samples are
// contiguous, label values use only the \\, \" and \n escapes, no series
// repeats, counters end in _total, and a histogram's buckets are
// cumulative, end with le="+Inf" equal to _count, and come with _sum.
func parseExposition(text string) (exposition, error) {
	e := exposition{values: map[string]float64{}, types: map[string]string{}}
	if !strings.HasSuffix(text, "\n") {
		return e, errors.New("does not end with a line feed")
	}
	helps := map[string]bool{}
	done := map[string]bool{} // families whose samples are behind us
	current := ""
	type hist struct {
		les     []float64
		counts  []float64
		sum     bool
		count   float64
		hasCnt  bool
		samples int
	}
	hists := map[string]*hist{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		n := i + 1
		if line == "" {
			return e, fmt.Errorf("line %d: empty line", n)
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 3 || (f[1] != "HELP" && f[1] != "TYPE") {
				return e, fmt.Errorf("line %d: comment that is not HELP or TYPE: %q", n, line)
			}
			name := f[2]
			if !metricName.MatchString(name) {
				return e, fmt.Errorf("line %d: bad metric name %q", n, name)
			}
			if done[name] || (current != name && current != "" && (helps[name] || e.types[name] != "")) {
				return e, fmt.Errorf("line %d: %s announced after its samples", n, name)
			}
			if current != name && current != "" {
				done[current] = true
			}
			current = name
			if f[1] == "HELP" {
				if helps[name] {
					return e, fmt.Errorf("line %d: second HELP for %s", n, name)
				}
				if len(f) != 4 || f[3] == "" {
					return e, fmt.Errorf("line %d: HELP without text", n)
				}
				if err := checkEscapes(f[3], false); err != nil {
					return e, fmt.Errorf("line %d: HELP: %w", n, err)
				}
				helps[name] = true
				continue
			}
			if e.types[name] != "" {
				return e, fmt.Errorf("line %d: second TYPE for %s", n, name)
			}
			if len(f) != 4 {
				return e, fmt.Errorf("line %d: TYPE without a type", n)
			}
			switch f[3] {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				return e, fmt.Errorf("line %d: unknown type %q", n, f[3])
			}
			if f[3] == "counter" && !strings.HasSuffix(name, "_total") {
				return e, fmt.Errorf("line %d: counter %s does not end in _total", n, name)
			}
			e.types[name] = f[3]
			if f[3] == "histogram" {
				hists[name] = &hist{}
			}
			continue
		}
		name, labels, rest, err := parseSeries(line)
		if err != nil {
			return e, fmt.Errorf("line %d: %w", n, err)
		}
		family := name
		if h := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count"); hists[h] != nil {
			family = h
		}
		if family != current || e.types[family] == "" || !helps[family] {
			return e, fmt.Errorf("line %d: sample of %s outside its announced family", n, name)
		}
		fields := strings.Split(rest, " ")
		if len(fields) < 1 || len(fields) > 2 {
			return e, fmt.Errorf("line %d: want a value and an optional timestamp: %q", n, rest)
		}
		v, err := parseValue(fields[0])
		if err != nil {
			return e, fmt.Errorf("line %d: %w", n, err)
		}
		if len(fields) == 2 {
			if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
				return e, fmt.Errorf("line %d: bad timestamp", n)
			}
		}
		key := seriesKey(name, labels)
		if _, dup := e.values[key]; dup {
			return e, fmt.Errorf("line %d: series %s repeated", n, key)
		}
		e.values[key] = v
		if e.types[family] == "counter" && (v < 0 || math.IsNaN(v)) {
			return e, fmt.Errorf("line %d: counter %s is %v", n, key, v)
		}
		if h := hists[family]; h != nil {
			h.samples++
			switch name {
			case family + "_bucket":
				if len(labels) != 1 || labels[0][0] != "le" {
					return e, fmt.Errorf("line %d: bucket without exactly an le label", n)
				}
				le, err := parseValue(labels[0][1])
				if err != nil {
					return e, fmt.Errorf("line %d: le: %w", n, err)
				}
				if len(h.les) > 0 && (le <= h.les[len(h.les)-1] || v < h.counts[len(h.counts)-1]) {
					return e, fmt.Errorf("line %d: buckets not increasing and cumulative", n)
				}
				h.les, h.counts = append(h.les, le), append(h.counts, v)
			case family + "_sum":
				h.sum = true
			case family + "_count":
				h.count, h.hasCnt = v, true
			default:
				return e, fmt.Errorf("line %d: %s in histogram %s", n, name, family)
			}
		}
	}
	for name, h := range hists {
		if h.samples == 0 {
			continue
		}
		if len(h.les) == 0 || !math.IsInf(h.les[len(h.les)-1], 1) || !h.sum || !h.hasCnt || h.counts[len(h.counts)-1] != h.count {
			return e, fmt.Errorf("histogram %s: needs buckets up to le=\"+Inf\" equal to _count, and _sum", name)
		}
	}
	return e, nil
}

// parseSeries splits `name{l="v",…} rest`.
func parseSeries(line string) (string, [][2]string, string, error) {
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return "", nil, "", fmt.Errorf("not a sample: %q", line)
	}
	name := line[:i]
	if !metricName.MatchString(name) {
		return "", nil, "", fmt.Errorf("bad metric name %q", name)
	}
	rest := line[i:]
	var labels [][2]string
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			eq := strings.IndexByte(rest, '=')
			if eq <= 0 || !labelName.MatchString(rest[:eq]) || len(rest) < eq+2 || rest[eq+1] != '"' {
				return "", nil, "", fmt.Errorf("bad label in %q", line)
			}
			ln := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' {
					if j+1 == len(rest) {
						break
					}
					j++
					switch rest[j] {
					case '\\':
						val.WriteByte('\\')
					case '"':
						val.WriteByte('"')
					case 'n':
						val.WriteByte('\n')
					default:
						return "", nil, "", fmt.Errorf("bad escape \\%c in a label value", rest[j])
					}
					continue
				}
				if c == '"' {
					rest, closed = rest[j+1:], true
					break
				}
				if c == '\n' {
					return "", nil, "", errors.New("raw line feed in a label value")
				}
				val.WriteByte(c)
			}
			if !closed {
				return "", nil, "", fmt.Errorf("unterminated label value in %q", line)
			}
			for _, l := range labels {
				if l[0] == ln {
					return "", nil, "", fmt.Errorf("label %s repeated", ln)
				}
			}
			labels = append(labels, [2]string{ln, val.String()})
			if strings.HasPrefix(rest, ",") {
				rest = rest[1:]
				continue
			}
			if !strings.HasPrefix(rest, "}") {
				return "", nil, "", fmt.Errorf("bad label list in %q", line)
			}
			rest = rest[1:]
			break
		}
	}
	if !strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "  ") {
		return "", nil, "", fmt.Errorf("want one space before the value in %q", line)
	}
	return name, labels, rest[1:], nil
}

func parseValue(s string) (float64, error) {
	switch s {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || strings.ContainsAny(s, "_xXpP") || strings.EqualFold(s, "inf") || strings.EqualFold(s, "infinity") {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return v, nil
}

// checkEscapes allows in HELP only the \\ and \n escapes.
func checkEscapes(s string, label bool) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		if i+1 == len(s) {
			return errors.New("trailing backslash")
		}
		i++
		if s[i] != '\\' && s[i] != 'n' && !(label && s[i] == '"') {
			return fmt.Errorf("bad escape \\%c", s[i])
		}
	}
	return nil
}

func seriesKey(name string, labels [][2]string) string {
	if len(labels) == 0 {
		return name
	}
	ls := append([][2]string(nil), labels...)
	sort.Slice(ls, func(i, j int) bool { return ls[i][0] < ls[j][0] })
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l[0] + "=" + strconv.Quote(l[1])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// TestParseExpositionRefuses checks the test's own parser on broken input.
func TestParseExpositionRefuses(t *testing.T) {
	head := "# HELP m_total A counter.\n# TYPE m_total counter\n"
	for _, bad := range []string{
		"m_total 1\n",                    // no HELP/TYPE
		head + "m_total 1",               // no final line feed
		head + "m_total{a=\"x\\q\"} 1\n", // bad escape
		head + "m_total{a=\"x\"} 1\nm_total{a=\"x\"} 2\n", // repeated series
		head + "m_total{a=\"x} 1\n",                       // unterminated
		head + "m_total  1\n",                             // two spaces
		head + "m_total one\n",                            // bad value
		"# HELP m A gauge.\n# TYPE m counter\nm 1\n",      // counter without _total
		"# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
		"# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",                       // +Inf != count
		head + "\nm_total 1\n", // empty line
	} {
		if _, err := parseExposition(bad); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
	good := head + "m_total{a=\"q\\\"\\\\\\n\"} 1\n"
	e, err := parseExposition(good)
	if err != nil {
		t.Fatal(err)
	}
	if v := e.values[seriesKey("m_total", [][2]string{{"a", "q\"\\\n"}})]; v != 1 {
		t.Errorf("escaped label not parsed: %v", e.values)
	}
}

func TestMetricsAddrChecked(t *testing.T) {
	for _, c := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"", false, true},
		{"127.0.0.1:9464", false, true},
		{"127.0.0.2:0", false, true},
		{"[::1]:9464", false, true},
		{"localhost:9464", false, true},
		{":9464", false, false},
		{"0.0.0.0:9464", false, false},
		{"[::]:9464", false, false},
		{"10.0.0.1:9464", false, false},
		{"metrics.example:9464", false, false},
		{"0.0.0.0:9464", true, true},
		{"127.0.0.1", false, false}, // no port
	} {
		err := checkMetricsAddr(c.addr, c.allow)
		if (err == nil) != c.ok {
			t.Errorf("checkMetricsAddr(%q, %v) = %v", c.addr, c.allow, err)
		}
	}
}

// TestMetricsEscaping: label values and help texts are escaped; the
// restart counter a restart engineer increments shows by reason.
func TestMetricsEscaping(t *testing.T) {
	var b strings.Builder
	e := expo{w: &b}
	e.family("x_total", "counter", "Help with \\ and\nnewline.")
	e.sample("x_total", []string{"reason", "a \"quoted\"\\path\nline"}, 3)
	p, err := parseExposition(b.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if p.values[seriesKey("x_total", [][2]string{{"reason", "a \"quoted\"\\path\nline"}})] != 3 {
		t.Errorf("escaped label did not round-trip: %s", b.String())
	}
	var m metrics
	m.restarted("policy")
	m.restarted("policy")
	m.restarted("no live re-seed")
	if s := m.snapshot(); s.restarts["policy"] != 2 || s.restarts["no live re-seed"] != 1 {
		t.Errorf("restarts: %v", s.restarts)
	}
	var h histogram
	for _, v := range []float64{0.0005, 0.001, 0.003, 20} {
		h.observe(v)
	}
	c := h.cumulative()
	if c[0] != 2 || c[2] != 3 || c[len(c)-2] != 3 || c[len(c)-1] != 4 || h.count != 4 {
		t.Errorf("histogram buckets: %v", c)
	}
}

// TestObserveMetricsMove scrapes a running agent's real endpoint while a
// real kernel is served and checks that the values move: records applied
// and refused, re-seeds, kernels by state and mode, NATS, and the
// change-to-applied histogram. No value and no secret name appears.
func TestObserveMetricsMove(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(withMetrics)
	base := metricsURL(t, a.Agent)
	if !strings.HasPrefix(a.MetricsAddr(), "127.0.0.1:") {
		t.Errorf("metrics on %s", a.MetricsAddr())
	}
	waitFor(t, 10*time.Second, func() error {
		if code, _, _, err := get(base + "/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("readyz %d %v", code, err)
		}
		return nil
	})
	m0, _ := scrape(t, base)
	for series, want := range map[string]float64{
		"nbsecrets_records_applied_total":                        0,
		"nbsecrets_records_loaded":                               1,
		"nbsecrets_nats_connected":                               1,
		"nbsecrets_reseeds_total":                                0,
		`nbsecrets_kernels{state="live"}`:                        0,
		`nbsecrets_kernels_by_mode{mode="live:control"}`:         0,
		`nbsecrets_change_to_applied_seconds_count`:              0,
		`nbsecrets_change_to_applied_seconds_bucket{le="+Inf"}`:  0,
		`nbsecrets_change_to_applied_seconds_bucket{le="0.001"}`: 0,
		`nbsecrets_kernels{state="start-only"}`:                  0,
		`nbsecrets_kernels_by_mode{mode="live:shell-idle"}`:      0,
		`nbsecrets_kernels_by_mode{mode="start-only"}`:           0,
		`nbsecrets_kernels_by_mode{mode="live:subshell"}`:        0,
		`nbsecrets_reseed_failures_total`:                        0,
		`nbsecrets_secrets`:                                      0,
		`nbsecrets_nats_reconnects_total`:                        0,
		`nbsecrets_kernels{state="connecting"}`:                  0,
		`nbsecrets_kernels{state="unreachable"}`:                 0,
		`nbsecrets_change_to_applied_seconds_sum`:                0,
	} {
		if got := m0.get(t, series); got != want {
			t.Errorf("before: %s = %v, want %v", series, got, want)
		}
	}
	if m0.types["nbsecrets_change_to_applied_seconds"] != "histogram" || m0.types["nbsecrets_kernels"] != "gauge" {
		t.Errorf("types: %v", m0.types)
	}

	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2 := secretValue("m1"), secretValue("m2")
	h.put("s1", "METRIC-SECRET", 1, v1)
	waitEnv(t, c, "METRIC-SECRET", v1)
	waitFor(t, 10*time.Second, func() error {
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].Holds["METRIC-SECRET"].Version != 1 {
			return errors.New("status not updated yet")
		}
		return nil
	})
	m1, _ := scrape(t, base)
	before := m1.get(t, "nbsecrets_change_to_applied_seconds_count")
	h.put("s1", "METRIC-SECRET", 2, v2)
	waitEnv(t, c, "METRIC-SECRET", v2)
	h.putRaw(protocol.RecordKey(h.ws.ID, "s9"), []byte("{not a record"))
	var m2 exposition
	var body string
	waitFor(t, 10*time.Second, func() error {
		m2, body = scrape(t, base)
		if m2.values["nbsecrets_change_to_applied_seconds_count"] <= before ||
			m2.values[`nbsecrets_records_refused_total{reason="malformed"}`] != 1 {
			return errors.New("metrics have not moved yet")
		}
		return nil
	})
	for series, want := range map[string]float64{
		"nbsecrets_records_applied_total":              2,
		`nbsecrets_kernels{state="live"}`:              1,
		`nbsecrets_kernels_by_mode{mode="live:quiet"}`: 1,
		"nbsecrets_secrets":                            1,
		"nbsecrets_nats_connected":                     1,
	} {
		if got := m2.get(t, series); got != want {
			t.Errorf("after: %s = %v, want %v", series, got, want)
		}
	}
	if r := m2.get(t, "nbsecrets_reseeds_total"); r < 2 {
		t.Errorf("reseeds %v, want at least 2 (first contact and the update)", r)
	}
	n := m2.get(t, "nbsecrets_change_to_applied_seconds_count")
	if inf := m2.get(t, `nbsecrets_change_to_applied_seconds_bucket{le="+Inf"}`); inf != n {
		t.Errorf("+Inf bucket %v != count %v", inf, n)
	}
	if m2.get(t, `nbsecrets_change_to_applied_seconds_bucket{le="10"}`) != n {
		t.Error("a local change took more than 10 s to apply")
	}
	if s := m2.get(t, "nbsecrets_change_to_applied_seconds_sum"); !(s > 0) {
		t.Errorf("latency sum %v", s)
	}
	for _, leak := range []string{v1, v2, "METRIC-SECRET"} {
		if strings.Contains(body, leak) {
			t.Errorf("/metrics shows a secret value or name")
		}
	}
	// Restarts show by reason once counted.
	a.metrics.restarted("policy")
	m3, _ := scrape(t, base)
	if m3.get(t, `nbsecrets_restarts_total{reason="policy"}`) != 1 {
		t.Error("restart not counted")
	}
	// Stopping the agent stops the server.
	a.stop()
	if a.MetricsAddr() != "" {
		t.Error("MetricsAddr still set after Run returned")
	}
	if _, _, _, err := get(base + "/healthz"); err == nil {
		t.Error("the server still answers after Run returned")
	}
}

// TestHealthReadyTransitions: /healthz answers as long as the agent runs;
// /readyz only while the records are loaded and NATS is connected.
func TestHealthReadyTransitions(t *testing.T) {
	h := newHarness(t)
	h.ns.Shutdown() // the agent starts with NATS down
	h.ns.WaitForShutdown()
	a := h.startAgentWith(withMetrics)
	base := metricsURL(t, a.Agent)
	status := func(path string) (int, string) {
		code, body, _, err := get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return code, strings.TrimSpace(body)
	}
	waitState := func(want int) {
		t.Helper()
		waitFor(t, 20*time.Second, func() error {
			if code, body := status("/readyz"); code != want {
				return fmt.Errorf("readyz %d (%s), want %d", code, body, want)
			}
			return nil
		})
	}
	if code, body := status("/healthz"); code != http.StatusOK || body != "ok" {
		t.Errorf("healthz with NATS down: %d %q", code, body)
	}
	code, body := status("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "records not loaded") || !strings.Contains(body, "NATS") {
		t.Errorf("readyz before NATS: %d %q", code, body)
	}
	h.ns = natstest.Restart(t, h.ns)
	waitState(http.StatusOK)
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	waitState(http.StatusServiceUnavailable)
	if _, body := status("/readyz"); strings.Contains(body, "records not loaded") {
		t.Errorf("readyz after a disconnect says %q: the records stay loaded", body)
	}
	if code, _ := status("/healthz"); code != http.StatusOK {
		t.Errorf("healthz while NATS is down: %d", code)
	}
	m, _ := scrape(t, base)
	if m.get(t, "nbsecrets_nats_connected") != 0 || m.get(t, "nbsecrets_records_loaded") != 1 {
		t.Error("metrics do not show NATS down with the records loaded")
	}
	h.ns = natstest.Restart(t, h.ns)
	waitState(http.StatusOK)
	waitFor(t, 10*time.Second, func() error {
		m, _ := scrape(t, base)
		if m.values["nbsecrets_nats_reconnects_total"] < 1 {
			return errors.New("reconnect not counted")
		}
		return nil
	})
}

// TestMetricsAddrRefused: New refuses a metrics address on every interface.
func TestMetricsAddrRefused(t *testing.T) {
	h := newHarness(t)
	_, err := New(Config{Workspace: h.ws, Opener: h.opener(), Conn: h.nc, MetricsAddr: ":9464"})
	if !errors.Is(err, errNotLoopback) {
		t.Errorf("New with MetricsAddr :9464: %v", err)
	}
}
