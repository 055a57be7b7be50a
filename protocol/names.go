package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxValueSize is the largest secret value, in bytes.
const MaxValueSize = 64 << 10

// Name and value errors. Each is wrapped with the rule that was broken; the
// value itself never appears in an error.
var (
	ErrInvalidName   = errors.New("protocol: invalid secret name")
	ErrForbiddenName = errors.New("protocol: forbidden secret name")
	ErrNULInValue    = errors.New("protocol: secret value contains a NUL byte")
	ErrInvalidValue  = errors.New("protocol: secret value is not valid UTF-8 text")
	ErrValueTooLarge = errors.New("protocol: secret value too large")
)

// ValidateName reports whether name may be used as a secret name: 3 to 63
// characters, a Latin letter first, then letters, digits, hyphens or
// underscores, and neither a hyphen nor an underscore last; and not a name
// that changes how a process behaves (see [Forbidden]). The error says which
// rule was broken.
func ValidateName(name string) error {
	switch {
	case len(name) < 3:
		return fmt.Errorf("%w %q: shorter than 3 characters", ErrInvalidName, name)
	case len(name) > 63:
		return fmt.Errorf("%w: longer than 63 characters (%d)", ErrInvalidName, len(name))
	case !isLetter(name[0]):
		return fmt.Errorf("%w %q: must start with a Latin letter", ErrInvalidName, printable(name))
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if !isLetter(c) && !isDigit(c) && c != '-' && c != '_' {
			return fmt.Errorf("%w %q: character %d is not a letter, digit, hyphen or underscore", ErrInvalidName, printable(name), i+1)
		}
	}
	if last := name[len(name)-1]; last == '-' || last == '_' {
		return fmt.Errorf("%w %q: must not end with a hyphen or an underscore", ErrInvalidName, name)
	}
	if reason := Forbidden(name); reason != "" {
		return fmt.Errorf("%w %q: %s", ErrForbiddenName, name, reason)
	}
	return nil
}

// IsShellIdentifier reports whether a valid name is also a POSIX shell
// identifier: no hyphen. A name with a hyphen reaches os.environ and every
// program started directly, but a shell cannot expand it ($DB-PASSWORD is
// $DB followed by "-PASSWORD"), and some shells, Debian's /bin/sh (dash)
// among them, drop it from the environment of the programs they start. The
// secret commands warn about such names; they are allowed, as the platforms
// whose secrets nbsecrets carries allow them.
func IsShellIdentifier(name string) bool { return !strings.Contains(name, "-") }

// printable makes a refused name, id or key safe to show: they are not
// secret, but a refused one may hold control characters or invalid UTF-8,
// which would forge or break a log line where it is printed with %s. Each
// is shown as "?". It keeps the 129 bytes of the longest valid key.
func printable(s string) string {
	const limit = 2*64 + 1
	more := ""
	if len(s) > limit {
		s, more = s[:limit], "..."
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s) + more
}

func isLetter(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// forbiddenExact are names, compared without regard to case, that change how
// a process, a shell or a language runtime behaves, or where it sends
// traffic. A project member who could set them in another member's kernel
// could run code there.
var forbiddenExact = map[string]string{
	"PATH": "search path for programs", "HOME": "home directory", "SHELL": "user's shell",
	"USER": "user identity", "LOGNAME": "user identity", "PWD": "working directory", "OLDPWD": "working directory",
	"IFS": "shell word splitting", "ENV": "shell start-up file", "CDPATH": "shell cd path",
	"PROMPT_COMMAND": "runs code at every prompt", "PS1": "shell prompt", "PS2": "shell prompt",
	"PS3": "shell prompt", "PS4": "shell trace prompt, expanded as code", "SHELLOPTS": "shell options",
	"GLOBIGNORE": "shell globbing", "HISTFILE": "shell history", "INPUTRC": "readline start-up file",
	"PERL5OPT": "perl options", "PERL5LIB": "perl module path", "PERLLIB": "perl module path",
	"RUBYOPT": "ruby options", "RUBYLIB": "ruby library path", "NODE_OPTIONS": "node options",
	"NODE_PATH": "node module path", "GCONV_PATH": "glibc charset modules", "GLIBC_TUNABLES": "glibc tunables",
	"LOCPATH": "glibc locale path", "NLSPATH": "message catalogue path", "HOSTALIASES": "resolver aliases",
	"RESOLV_HOST_CONF": "resolver configuration", "TMPDIR": "temporary directory", "TMP": "temporary directory",
	"TEMP": "temporary directory", "TZDIR": "time zone files", "EDITOR": "program run to edit",
	"VISUAL": "program run to edit", "PAGER": "program run to page", "MANPAGER": "program run to page",
	"BROWSER": "program run to browse", "LESSOPEN": "program run by less", "LESSCLOSE": "program run by less",
	"HTTP_PROXY": "redirects traffic", "HTTPS_PROXY": "redirects traffic", "ALL_PROXY": "redirects traffic",
	"NO_PROXY": "redirects traffic", "FTP_PROXY": "redirects traffic", "SSL_CERT_FILE": "trusted certificates",
	"SSL_CERT_DIR": "trusted certificates", "REQUESTS_CA_BUNDLE": "trusted certificates",
	"CURL_CA_BUNDLE": "trusted certificates", "SSH_AUTH_SOCK": "ssh agent", "CLASSPATH": "java class path",
	"JAVA_TOOL_OPTIONS": "java options", "JDK_JAVA_OPTIONS": "java options", "_JAVA_OPTIONS": "java options",
	"IPYTHONDIR": "IPython configuration", "MPLCONFIGDIR": "matplotlib configuration",
	"VIRTUAL_ENV": "python environment", "PKG_CONFIG_PATH": "build search path", "SHLVL": "shell level",
	"KRB5CCNAME": "kerberos credentials", "KRB5_CONFIG": "kerberos configuration", "TERMINFO": "terminal database",
	"MAIL": "shell mail", "MAILPATH": "shell mail",
	"PS0": "shell prompt, expanded as code", "ZDOTDIR": "zsh start-up files",
	"PERL5DB": "perl debugger code", "GEM_HOME": "ruby gem path", "GEM_PATH": "ruby gem path",
	"NODE_EXTRA_CA_CERTS": "trusted certificates", "NODE_TLS_REJECT_UNAUTHORIZED": "turns off TLS checks",
	"NODE_REPL_EXTERNAL_MODULE": "node module run at start",
	"LUA_INIT":                  "lua code run at start", "LUA_PATH": "lua module path", "LUA_CPATH": "lua module path",
	"TCLLIBPATH": "tcl library path", "OPENSSL_CONF": "openssl configuration (loads modules)",
	"OPENSSL_ENGINES": "openssl engines", "OPENSSL_MODULES": "openssl providers",
	"SSLKEYLOGFILE": "writes TLS keys to a file", "MPLBACKEND": "matplotlib backend (imports a module)",
	"SSH_ASKPASS": "program run for a password", "SUDO_ASKPASS": "program run for a password",
	"GTK_MODULES": "gtk modules", "QT_PLUGIN_PATH": "qt plugins", "KUBECONFIG": "kubernetes configuration (runs exec plugins)",
	"CURL_HOME": "curl configuration", "WGETRC": "wget configuration",
}

// forbiddenPrefixes are name prefixes, compared without regard to case, that
// belong to a runtime, a loader or a tool.
var forbiddenPrefixes = []struct{ prefix, reason string }{
	{"LD_", "dynamic loader"}, {"DYLD_", "dynamic loader"}, {"PYTHON", "python interpreter"},
	{"JPY_", "jupyter"}, {"JUPYTER", "jupyter"}, {"BASH_", "bash (BASH_ENV, exported functions)"},
	{"GIT_", "git (GIT_SSH_COMMAND runs code)"}, {"MALLOC_", "allocator"}, {"R_", "R start-up"},
	{"CONDA", "conda"}, {"PIP_", "pip (index and options)"}, {"UV_", "uv"}, {"NPM_CONFIG_", "npm"},
	{"XDG_", "configuration directories"}, {"LC_", "locale"}, {"NBSECRETS", "nbsecrets itself"},
	{"JULIA_", "julia (load and depot paths)"},
}

// Forbidden returns why name may not be a secret name because it changes how
// a process behaves, or "" when it may. It compares without regard to case:
// some tools read both HTTP_PROXY and http_proxy.
func Forbidden(name string) string {
	up := strings.ToUpper(name)
	if reason, ok := forbiddenExact[up]; ok {
		return "reserved (" + reason + ")"
	}
	for _, p := range forbiddenPrefixes {
		if strings.HasPrefix(up, p.prefix) {
			return "reserved prefix " + p.prefix + " (" + p.reason + ")"
		}
	}
	return ""
}

// ValidateValue reports whether v may be a secret value: UTF-8 text without
// NUL bytes (an environment cannot hold NUL), at most MaxValueSize bytes. The
// error never contains the value.
func ValidateValue(v []byte) error {
	if len(v) > MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(v), MaxValueSize)
	}
	for i, c := range v {
		if c == 0 {
			return fmt.Errorf("%w at offset %d", ErrNULInValue, i)
		}
	}
	if !utf8.Valid(v) {
		return ErrInvalidValue
	}
	return nil
}
