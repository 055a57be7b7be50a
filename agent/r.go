package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// rReseed is one R expression that applies p in an IRkernel: Sys.unsetenv
// and Sys.setenv for exactly the plan (a full plan also removes the names
// listed in ManagedVar that it does not set), then ManagedVar set to
// managed. Sent as a silent execute_request it prints nothing and counts no
// execution.
//
// Every name and value travels hex-encoded and is decoded in R with
// strtoi(…, 16L) and rawToChar, all base R. Hex rather than base64: base R
// has no base64 decoder, and a hand-written one (bit operations over a
// lookup table) is code to get wrong in a language the tests barely cover,
// while the hex decoder is one line whose every function is documented base
// R. Hex doubles the size (128 KiB for a 64 KiB value, against 86 KiB in
// base64); R parses that in milliseconds. The bytes reach putenv unchanged
// whatever the kernel's locale: rawToChar marks no encoding, so Sys.setenv
// does not translate them.
//
// Encoding keeps values out of the code as literals, as pythonReseed does;
// it is not secrecy. Note that IRkernel, unlike ipykernel, publishes the
// code of a silent request on iopub (execute_input), so a frontend showing
// other clients' activity sees the hex text.
//
// The code binds nothing in the global environment: it runs in
// base::local with a fresh environment whose parent is the base
// environment, so a user's own c, Sys.setenv or paste in the global
// environment cannot stand in for the base functions. An error is replaced
// by a fixed message, since R's own messages can quote a string (rawToChar
// quotes the one it refuses).
func rReseed(p Plan, managed string) (string, error) {
	names := sortedKeys(p.Set)
	vals := make([]string, len(names))
	for i, n := range names {
		if strings.IndexByte(p.Set[n], 0) >= 0 {
			return "", fmt.Errorf("encoding re-seed: the value of %s contains a NUL byte", n)
		}
		vals[i] = p.Set[n]
	}
	unset := append([]string(nil), p.Unset...)
	sort.Strings(unset)
	for _, n := range append(append([]string{managed}, names...), unset...) {
		if strings.IndexByte(n, 0) >= 0 {
			return "", errors.New("encoding re-seed: a name contains a NUL byte")
		}
	}
	full := "FALSE"
	if p.Full {
		full = "TRUE"
	}
	var b strings.Builder
	b.WriteString("base::invisible(base::local({\n")
	b.WriteString("tryCatch({\n")
	b.WriteString(`h <- function(x) vapply(x, function(s) if (nzchar(s)) rawToChar(as.raw(strtoi(substring(s, seq.int(1L, nchar(s), 2L), seq.int(2L, nchar(s), 2L)), 16L))) else "", "", USE.NAMES = FALSE)` + "\n")
	b.WriteString("k <- h(" + rHexVector(names) + ")\n")
	b.WriteString("v <- h(" + rHexVector(vals) + ")\n")
	b.WriteString("u <- h(" + rHexVector(unset) + ")\n")
	b.WriteString("if (" + full + ") { m <- strsplit(Sys.getenv(\"" + ManagedVar + "\"), \",\", fixed = TRUE)[[1L]]; u <- setdiff(m[nzchar(m)], k) }\n")
	b.WriteString("if (length(u) && !all(Sys.unsetenv(u))) stop(\"unsetenv\")\n")
	b.WriteString("if (length(k)) { a <- as.list(v); names(a) <- k; if (!all(do.call(Sys.setenv, a))) stop(\"setenv\") }\n")
	b.WriteString("a <- list(h(" + rHexVector([]string{managed}) + ")); names(a) <- \"" + ManagedVar + "\"; if (!all(do.call(Sys.setenv, a))) stop(\"setenv\")\n")
	b.WriteString("}, error = function(e) stop(\"nbsecrets re-seed failed\", call. = FALSE))\n")
	b.WriteString("NULL\n")
	b.WriteString("}, envir = base::new.env(parent = base::baseenv())))\n")
	return b.String(), nil
}

// rHexVector is an R character vector of the hex encodings of ss.
func rHexVector(ss []string) string {
	if len(ss) == 0 {
		return "character(0L)"
	}
	var b strings.Builder
	b.WriteString("c(")
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(hex.EncodeToString([]byte(s)))
		b.WriteByte('"')
	}
	b.WriteByte(')')
	return b.String()
}

// probeShellIdle is Probe for a single-threaded kernel (IRkernel): one
// thread serves shell, control and heartbeat, control answers only
// shutdown, and nothing answers while a cell runs. A busy kernel cannot be
// told from a hung one, so it passes; a dead one is caught by Done. An idle
// kernel must answer kernel_info on shell; if a cell started meanwhile and
// holds the shell, the probe passes too.
func (s *jupyterSession) probeShellIdle(ctx context.Context) error {
	if s.Busy() {
		return nil
	}
	if _, err := s.c.KernelInfo(ctx); err != nil && !s.Busy() {
		return err
	}
	return nil
}
