package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// rReseed is one R expression that applies p in an IRkernel: Sys.unsetenv
// and Sys.setenv for exactly the plan (a full plan also removes the names
// listed in ManagedVar that it does not set), then ManagedVar set to
// managed. Sent as a silent execute_request it prints nothing and counts no
// execution.
//
// IRkernel, unlike ipykernel, publishes the code of even a silent request
// on iopub (execute_input), where any client of the kernel sees it. So the
// values are not in the code. They travel split in two with a one-time
// pad: the payload XORed with a random key of its length goes to a file
// (mode 0600, created in dir, the kernel's runtime directory, which the
// kernel reads since its connection file is there), and the key goes in the
// code. Neither half alone says anything about a value; the R code deletes
// the file before decoding, and the caller removes it after the request in
// any case (see the returned path). A request that runs after its file is
// gone (it waited behind a long cell past the apply timeout) does nothing:
// it cannot undo a newer re-seed, and it does not fail, which in IRkernel
// would abort the user's queued cells.
//
// Inside the payload every name and value is hex-encoded, one per line, and
// decoded with strtoi(…, 16L) and rawToChar, all base R (base R has no
// base64 decoder). The bytes reach putenv unchanged whatever the kernel's
// locale: rawToChar marks no encoding, so Sys.setenv does not translate
// them.
//
// The code binds nothing in the global environment: it runs in base::local
// with a fresh environment whose parent is the base environment, so a
// user's own c, Sys.setenv or paste cannot stand in for the base functions.
// An error is replaced by a fixed message, since R's own messages can quote
// a string.
func rReseed(p Plan, managed, dir string) (code, file string, err error) {
	names := sortedKeys(p.Set)
	unset := append([]string(nil), p.Unset...)
	sort.Strings(unset)
	for _, n := range append(append([]string{managed}, names...), unset...) {
		if strings.IndexByte(n, 0) >= 0 {
			return "", "", errors.New("encoding re-seed: a name contains a NUL byte")
		}
	}
	var payload strings.Builder
	line := func(tag, s string) {
		payload.WriteString(tag)
		payload.WriteByte(' ')
		payload.WriteString(hex.EncodeToString([]byte(s)))
		payload.WriteByte('\n')
	}
	for _, n := range names {
		if strings.IndexByte(p.Set[n], 0) >= 0 {
			return "", "", fmt.Errorf("encoding re-seed: the value of %s contains a NUL byte", n)
		}
		line("k", n)
		line("v", p.Set[n])
	}
	for _, n := range unset {
		line("u", n)
	}
	line("m", managed)
	plain := []byte(payload.String())
	key := make([]byte, len(plain))
	if _, err := rand.Read(key); err != nil {
		return "", "", fmt.Errorf("encoding re-seed: %w", err)
	}
	for i := range plain {
		plain[i] ^= key[i]
	}
	f, err := os.CreateTemp(dir, ".nbsecrets-reseed-*") // mode 0600
	if err != nil {
		return "", "", fmt.Errorf("writing re-seed file: %w", err)
	}
	_, err = f.Write(plain)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", "", fmt.Errorf("writing re-seed file: %w", err)
	}
	full := "FALSE"
	if p.Full {
		full = "TRUE"
	}
	var b strings.Builder
	b.WriteString("base::invisible(base::local({\n")
	b.WriteString(`h <- function(x) vapply(x, function(s) if (nzchar(s)) rawToChar(as.raw(strtoi(substring(s, seq.int(1L, nchar(s), 2L), seq.int(2L, nchar(s), 2L)), 16L))) else "", "", USE.NAMES = FALSE)` + "\n")
	b.WriteString("r <- function(s) as.raw(strtoi(substring(s, seq.int(1L, nchar(s), 2L), seq.int(2L, nchar(s), 2L)), 16L))\n")
	b.WriteString("f <- h(" + rHexVector([]string{f.Name()}) + ")\n")
	b.WriteString("if (!file.exists(f)) return(NULL)\n")
	b.WriteString("tryCatch({\n")
	b.WriteString("x <- readBin(f, \"raw\", file.info(f)$size); file.remove(f)\n")
	b.WriteString("x <- as.raw(bitwXor(as.integer(x), as.integer(r(\"" + hex.EncodeToString(key) + "\"))))\n")
	b.WriteString("l <- strsplit(rawToChar(x), \"\\n\", fixed = TRUE)[[1L]]\n")
	b.WriteString("g <- function(t) h(substring(l[startsWith(l, paste0(t, \" \"))], 3L))\n")
	b.WriteString("k <- g(\"k\"); v <- g(\"v\"); u <- g(\"u\"); m1 <- g(\"m\")\n")
	b.WriteString("if (" + full + ") { m <- strsplit(Sys.getenv(\"" + ManagedVar + "\"), \",\", fixed = TRUE)[[1L]]; u <- setdiff(m[nzchar(m)], k) }\n")
	b.WriteString("if (length(u) && !all(Sys.unsetenv(u))) stop(\"unsetenv\")\n")
	b.WriteString("if (length(k)) { a <- as.list(v); names(a) <- k; if (!all(do.call(Sys.setenv, a))) stop(\"setenv\") }\n")
	b.WriteString("a <- list(if (length(m1)) m1[[1L]] else \"\"); names(a) <- \"" + ManagedVar + "\"; if (!all(do.call(Sys.setenv, a))) stop(\"setenv\")\n")
	b.WriteString("}, error = function(e) { if (file.exists(f)) file.remove(f); stop(\"nbsecrets re-seed failed\", call. = FALSE) })\n")
	b.WriteString("NULL\n")
	b.WriteString("}, envir = base::new.env(parent = base::baseenv())))\n")
	clear(plain)
	clear(key)
	return b.String(), f.Name(), nil
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
// thread serves shell, control and heartbeat, and nothing answers while a
// cell runs. A busy kernel cannot be told from a hung one, so it passes; a
// dead one is caught by Done. An idle kernel must echo on its heartbeat,
// which Jupyter does not see (a kernel_info on shell would record
// activity); if a cell started meanwhile and holds the thread, the probe
// passes too.
func (s *jupyterSession) probeShellIdle(ctx context.Context) error {
	if s.Busy() {
		return nil
	}
	if err := jupyter.Ping(ctx, &s.info); err != nil && !s.Busy() {
		return err
	}
	return nil
}
