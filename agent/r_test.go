package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// rEnvDump is R code that prints, one line each, "NAME HEX" for the names
// given (the value's bytes in hex, "NA" when unset) as R sees them and as a
// child process sees them (printenv), then the global environment's names.
func rEnvDump(tag string, names ...string) string {
	var b strings.Builder
	for _, n := range names {
		b.WriteString(`local({ v <- Sys.getenv("` + n + `", unset = NA); cat("` + tag + ` ` + n + ` ", if (is.na(v)) "NA" else paste(sprintf("%02x", as.integer(charToRaw(v))), collapse = ""), "\n", sep = "") })` + "\n")
	}
	return b.String()
}

func hexOrNA(v string, set bool) string {
	if !set {
		return "NA"
	}
	return hex.EncodeToString([]byte(v))
}

// TestRReseedCode runs the generated R code in a plain Rscript process: it
// sets and unsets exactly the plan, a full plan removes the names it gave
// before, the user's own variables stay, child processes see the values,
// nothing is printed, no name is bound in the global environment, and a
// user's own c or Sys.setenv there does not stand in for base R's.
func TestRReseedCode(t *testing.T) {
	rscript := kerneltest.Rscript(t)
	tricky := "x'\"\\\n$(echo no) `id` ${HOME} %s \\x00 ü 日本 \U0001F511\r\t"
	long := strings.Repeat("0123456789abcdef", protocol.MaxValueSize/16)
	dir := t.TempDir()
	full, fullFile, err := rReseed(Plan{Set: map[string]string{"A": tricky, "B": "ü", "DB-PASSWORD": "p$ss", "EMPTY": "", "LONG": long}, Full: true}, "A,B,DB-PASSWORD,EMPTY,LONG", dir)
	if err != nil {
		t.Fatal(err)
	}
	diff, diffFile, err := rReseed(Plan{Set: map[string]string{"B": "b2"}, Unset: []string{"A", "LONG"}}, "B,DB-PASSWORD,EMPTY", dir)
	if err != nil {
		t.Fatal(err)
	}
	// Neither the code (which IRkernel shows on iopub) nor the file holds a
	// value, plain or hex-encoded.
	for _, f := range []string{fullFile, diffFile} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("re-seed file %v: %v", fi, err)
		}
		b, _ := os.ReadFile(f)
		// Values long enough that random key bytes cannot match them by chance.
		for _, v := range []string{tricky, "p$ss", "0123456789abcdef"} {
			if strings.Contains(string(b), v) || strings.Contains(string(b), hex.EncodeToString([]byte(v))) ||
				strings.Contains(full+diff, v) || strings.Contains(full+diff, hex.EncodeToString([]byte(v))) {
				t.Errorf("a value appears in the code or the file")
			}
		}
	}
	names := []string{"A", "B", "DB-PASSWORD", "EMPTY", "LONG", "OLD", "MINE", ManagedVar}
	prog := strings.Join([]string{
		`c <- function(...) stop("masked c"); Sys.setenv <- function(...) stop("masked Sys.setenv"); paste0 <- function(...) stop("masked")`,
		`before <- ls(globalenv(), all.names = TRUE)`,
		`cat("START\n")`,
		full,
		`cat("FULL\n")`,
		`rm(c)`, // the dump below uses c() itself
		rEnvDump("r1", names...),
		// A child process sees the value. Not DB-PASSWORD: Debian's /bin/sh
		// (dash), through which system() runs, drops names with a hyphen
		// from the environment it passes on.
		`cat("child1 ", system("printenv B", intern = TRUE), "\n", sep = "")`,
		`c <- function(...) stop("masked c")`,
		diff,
		`rm(c)`,
		rEnvDump("r2", names...),
		`cat("global ", paste(setdiff(ls(globalenv(), all.names = TRUE), c(before, "before")), collapse = ","), "\n", sep = "")`,
	}, "\n")
	file := t.TempDir() + "/prog.R"
	if err := os.WriteFile(file, []byte(prog), 0o600); err != nil {
		t.Fatal(err)
	}
	fullData, _ := os.ReadFile(fullFile)
	diffData, _ := os.ReadFile(diffFile)
	for _, locale := range []string{"C.UTF-8", "C"} {
		t.Run(locale, func(t *testing.T) {
			// The code deletes its file: put them back for this run.
			if err := os.WriteFile(fullFile, fullData, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(diffFile, diffData, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(rscript, "--vanilla", file)
			cmd.Env = append(os.Environ(), "LANG="+locale, "LC_ALL="+locale, ManagedVar+"=OLD,A", "OLD=stale", "MINE=kept", "A=before")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("Rscript: %v\n%s", err, redact(string(out)))
			}
			want := []string{"START", "FULL"}
			r1 := map[string]string{"A": tricky, "B": "ü", "DB-PASSWORD": "p$ss", "EMPTY": "", "LONG": long, "MINE": "kept", ManagedVar: "A,B,DB-PASSWORD,EMPTY,LONG"}
			for _, n := range names {
				v, ok := r1[n]
				want = append(want, "r1 "+n+" "+hexOrNA(v, ok))
			}
			want = append(want, "child1 ü")
			r2 := map[string]string{"B": "b2", "DB-PASSWORD": "p$ss", "EMPTY": "", "MINE": "kept", ManagedVar: "B,DB-PASSWORD,EMPTY"}
			for _, n := range names {
				v, ok := r2[n]
				want = append(want, "r2 "+n+" "+hexOrNA(v, ok))
			}
			want = append(want, "global ")
			if got := strings.Split(strings.TrimRight(string(out), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("output differs (values shown as hex)\ngot:\n%s\nwant:\n%s", short(got), short(want))
			}
			for _, f := range []string{fullFile, diffFile} {
				if _, err := os.Stat(f); !os.IsNotExist(err) {
					t.Errorf("re-seed file left behind: %v", err)
				}
			}
		})
	}
	// A request that runs after its file is gone (it waited past the apply
	// timeout and the agent removed the file) does nothing and succeeds.
	out, err := exec.Command(rscript, "--vanilla", "-e", `Sys.setenv(B = "kept")`+"\n"+diff+"\n"+`cat(Sys.getenv("B"))`).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "kept" {
		t.Errorf("a re-seed without its file: %v %q", err, redact(string(out)))
	}
}

// TestRReseedCodeFails: a failure in R gives a fixed message, never R's own
// (which may quote a string), and the caller sees an error reply.
func TestRReseedCodeFails(t *testing.T) {
	rscript := kerneltest.Rscript(t)
	code, file, err := rReseed(Plan{Set: map[string]string{"BAD=NAME": "secret-ish"}}, "BAD=NAME", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(rscript, "--vanilla", "-e", code).CombinedOutput()
	if err == nil {
		t.Fatalf("setting a name with '=' did not fail: %s", out)
	}
	if !strings.Contains(string(out), "nbsecrets re-seed failed") || strings.Contains(string(out), "secret-ish") {
		t.Errorf("error output: %s", redact(string(out)))
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the file of a failed re-seed is left behind: %v", err)
	}
	if _, _, err := rReseed(Plan{Set: map[string]string{"A": "a\x00b"}}, "A", t.TempDir()); err == nil {
		t.Error("a value with NUL was accepted")
	}
}

// redact keeps test failure output free of long hex runs.
func redact(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "…"
	}
	return s
}

func short(lines []string) string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) > 120 {
			l = l[:120] + "…"
		}
		out[i] = l
	}
	return strings.Join(out, "\n")
}

// rEnvState is R code printing "unset", "match" or "differ" for the
// variable name against want, without the value ever leaving the kernel.
func rEnvState(name, want string) string {
	return `invisible(local({ v <- Sys.getenv("` + name + `", unset = NA); w <- rawToChar(as.raw(c(` + rBytes(want) + `)))
cat(if (is.na(v)) "unset" else if (identical(v, w)) "match" else "differ") }))`
}

// rBytes is s's bytes as an R list of integers.
func rBytes(s string) string {
	bs := make([]string, len(s))
	for i := range len(s) {
		bs[i] = fmt.Sprint(s[i])
	}
	return strings.Join(bs, ",")
}

// waitREnv polls the R kernel until name has want ("" = unset).
func waitREnv(t *testing.T, c *jupyter.Client, name, want string) {
	t.Helper()
	wantS := "match"
	if want == "" {
		wantS = "unset"
	}
	waitFor(t, 30*time.Second, func() error {
		if got := run(t, c, rEnvState(name, want)); got != wantS {
			return fmt.Errorf("%s in the R kernel: %s, want %s", name, got, wantS)
		}
		return nil
	})
}

// startRKernel starts Debian's IRkernel in the harness's runtime dir.
func startRKernel(t *testing.T, h *harness) (*kerneltest.Kernel, *jupyter.Client) {
	t.Helper()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir, Argv: kerneltest.IRkernel(t), KernelName: "ir"})
	return k, k.Client(t)
}

// TestRKernelLive: a real IRkernel is served live on shell when idle:
// create, update and delete show in Sys.getenv and in child processes, the
// kernel's state is kept, the re-seed leaves no name, output or execution
// count behind, and status shows the mode.
func TestRKernelLive(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	_, c := startRKernel(t, h)
	run(t, c, "state <- 41")
	v1, v2 := secretValue("r1"), secretValue("r2")
	h.put("s1", "DB-PASSWORD", 1, v1)
	h.put("s2", "API_TOKEN", 1, v1)
	waitREnv(t, c, "DB-PASSWORD", v1)
	waitREnv(t, c, "API_TOKEN", v1)
	waitFor(t, 10*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].State != StateLive || ks[0].Language != "R" || ks[0].Mode != ModeShellIdle || len(ks[0].Holds) != 2 {
			return fmt.Errorf("kernels: %+v", ks)
		}
		return nil
	})
	// A child process sees it (a name without a hyphen: see TestRReseedCode).
	child := `invisible(local({ w <- rawToChar(as.raw(c(` + rBytes(v1) + `)))
cat(identical(system("printenv API_TOKEN", intern = TRUE), w)) }))`
	if got := run(t, c, child); got != "TRUE" {
		t.Errorf("system() does not see the value: %s", got)
	}

	// The re-seed leaves no trace: same global names, the execution count
	// moves only with the probe cells themselves.
	probe := `cat(paste(ls(globalenv(), all.names = TRUE), collapse = ","))`
	before := run(t, c, probe)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r1, err := c.Run(ctx, "1")
	if err != nil {
		t.Fatal(err)
	}
	for drained := false; !drained; { // iopub from here on is the re-seed's
		select {
		case <-c.IOPub():
		default:
			drained = true
		}
	}
	h.put("s1", "DB-PASSWORD", 2, v2)
	var published []*jupyter.Message
	waitFor(t, 20*time.Second, func() error { // no cell of ours in between
		for more := true; more; {
			select {
			case m := <-c.IOPub():
				published = append(published, m)
			default:
				more = false
			}
		}
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].Holds["DB-PASSWORD"].Version != 2 {
			return errors.New("not re-seeded yet")
		}
		return nil
	})
	// IRkernel publishes the re-seed's code (execute_input); it must carry
	// no value, plain or hex-encoded.
	sawInput := false
	for _, m := range published {
		sawInput = sawInput || m.Header.MsgType == "execute_input"
		if strings.Contains(string(m.Content), v2) || strings.Contains(string(m.Content), hex.EncodeToString([]byte(v2))) {
			t.Errorf("the value appears on iopub in a %s message", m.Header.MsgType)
		}
	}
	if !sawInput {
		t.Error("no execute_input seen on iopub for the re-seed: the check above saw nothing")
	}
	r2, err := c.Run(ctx, "1")
	if err != nil {
		t.Fatal(err)
	}
	if r2.Reply.ExecutionCount != r1.Reply.ExecutionCount+1 {
		t.Errorf("the re-seed counted as an execution: %d -> %d", r1.Reply.ExecutionCount, r2.Reply.ExecutionCount)
	}
	if len(r2.Outputs) != 1 { // the cell's own [1] 1
		t.Errorf("%d outputs for one cell", len(r2.Outputs))
	}
	waitREnv(t, c, "DB-PASSWORD", v2)
	if after := run(t, c, probe); after != before {
		t.Errorf("the re-seed changed the global environment: %q -> %q", before, after)
	}

	h.del("s1", "DB-PASSWORD", 3)
	waitREnv(t, c, "DB-PASSWORD", "")
	waitREnv(t, c, "API_TOKEN", v1)
	if got := run(t, c, "cat(state + 1)"); got != "42" {
		t.Errorf("kernel state lost: %q", got)
	}
}

// TestRKernelUpdateWaitsForCell: an update made while an R cell runs
// arrives once the cell ends, not during it; a cell longer than the apply
// timeout makes the re-seed fail and the worker try again.
func TestRKernelUpdateWaitsForCell(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.ApplyTimeout = time.Second })
	_, c := startRKernel(t, h)
	v1, v2 := secretValue("before"), secretValue("during")
	h.put("s1", "LIVE", 1, v1)
	waitREnv(t, c, "LIVE", v1)

	marker := filepath.Join(t.TempDir(), "started")
	// The cell reports what it sees at its end: the value from before.
	cell := fmt.Sprintf("writeLines(\"\", %q)\nSys.sleep(3)\n%s", marker, rEnvState("LIVE", v1))
	out := runStarted(t, c, cell, marker, 60*time.Second)
	failures := a.Status().ReseedErrors
	h.put("s1", "LIVE", 2, v2)
	if got := <-out; got != "match" {
		t.Fatalf("the cell saw %q at its end, want the old value (match)", got)
	}
	waitREnv(t, c, "LIVE", v2)
	if a.Status().ReseedErrors <= failures {
		t.Error("a re-seed outlasting the apply timeout was not counted as failed")
	}
	waitFor(t, 20*time.Second, func() error {
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].State != StateLive || ks[0].Holds["LIVE"].Version != 2 {
			return fmt.Errorf("kernels: %+v", ks)
		}
		return nil
	})
}
