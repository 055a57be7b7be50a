package protocol

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// nameOracle is the name rule as a regular expression: the reference that
// ValidateName must agree with, leaving the forbidden list aside.
var nameOracle = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{1,61}[A-Za-z0-9]$`)

// checkAgainstOracle fails unless ValidateName's verdict on name agrees
// with nameOracle and Forbidden.
func checkAgainstOracle(t *testing.T, name string) {
	t.Helper()
	err := ValidateName(name)
	match := nameOracle.MatchString(name)
	switch {
	case !match:
		if !errors.Is(err, ErrInvalidName) || errors.Is(err, ErrForbiddenName) {
			t.Fatalf("ValidateName(%q) = %v; the rule refuses it", name, err)
		}
	case Forbidden(name) != "":
		if !errors.Is(err, ErrForbiddenName) || errors.Is(err, ErrInvalidName) {
			t.Fatalf("ValidateName(%q) = %v; the name is forbidden", name, err)
		}
	default:
		if err != nil {
			t.Fatalf("ValidateName(%q) = %v; the rule accepts it", name, err)
		}
	}
	if err != nil && strings.ContainsAny(err.Error(), "\n\r\x00\x1b") {
		t.Fatalf("ValidateName(%q) error has control characters: %q", name, err)
	}
}

func TestIsShellIdentifier(t *testing.T) {
	for name, want := range map[string]bool{"DB_PASSWORD": true, "db2": true, "DB-PASSWORD": false, "a-b_c": false} {
		if err := ValidateName(name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := IsShellIdentifier(name); got != want {
			t.Errorf("IsShellIdentifier(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		want error // nil: valid
	}{
		{"DB-PASSWORD", nil},
		{"api_key", nil},
		{"abc", nil},
		{"A1b", nil},
		{"a-1", nil},
		{"Z" + strings.Repeat("x", 62), nil},
		{"GITHUB_TOKEN", nil},
		{"LDAP_PASSWORD", nil},
		{"PATHS", nil},
		{"ENVIRONMENT", nil},
		{"AWS_SECRET_ACCESS_KEY", nil},
		{"OPENAI_API_KEY", nil},

		{"", ErrInvalidName},
		{"a", ErrInvalidName},
		{"ab", ErrInvalidName},
		{"Z" + strings.Repeat("x", 63), ErrInvalidName},
		{strings.Repeat("a", 1000), ErrInvalidName},
		{"1abc", ErrInvalidName},
		{"_abc", ErrInvalidName},
		{"-abc", ErrInvalidName},
		{"ébc", ErrInvalidName},
		{"a.b", ErrInvalidName},
		{"a b", ErrInvalidName},
		{"a=b", ErrInvalidName},
		{"a$b", ErrInvalidName},
		{"a*b", ErrInvalidName},
		{"a>b", ErrInvalidName},
		{"ab\x00", ErrInvalidName},
		{"ab\n", ErrInvalidName},
		{"abé", ErrInvalidName},
		{"ab\xff", ErrInvalidName},
		{"BASH_FUNC_x%%", ErrInvalidName},
		{"abc-", ErrInvalidName},
		{"abc_", ErrInvalidName},
		{"a--", ErrInvalidName},

		{"PATH", ErrForbiddenName},
		{"path", ErrForbiddenName},
		{"Path", ErrForbiddenName},
		{"HOME", ErrForbiddenName},
		{"SHELL", ErrForbiddenName},
		{"USER", ErrForbiddenName},
		{"IFS", ErrForbiddenName},
		{"ENV", ErrForbiddenName},
		{"env", ErrForbiddenName},
		{"BASH_ENV", ErrForbiddenName},
		{"PROMPT_COMMAND", ErrForbiddenName},
		{"PS4", ErrForbiddenName},
		{"PS0", ErrForbiddenName},
		{"LD_PRELOAD", ErrForbiddenName},
		{"ld_library_path", ErrForbiddenName},
		{"DYLD_INSERT_LIBRARIES", ErrForbiddenName},
		{"PYTHONSTARTUP", ErrForbiddenName},
		{"PYTHONPATH", ErrForbiddenName},
		{"pythonhome", ErrForbiddenName},
		{"JPY_x", ErrForbiddenName},
		{"JPY_SESSION_NAME", ErrForbiddenName},
		{"JUPYTER_x", ErrForbiddenName},
		{"JUPYTER_CONFIG_DIR", ErrForbiddenName},
		{"http_proxy", ErrForbiddenName},
		{"HTTPS_PROXY", ErrForbiddenName},
		{"no_proxy", ErrForbiddenName},
		{"PERL5OPT", ErrForbiddenName},
		{"NODE_OPTIONS", ErrForbiddenName},
		{"GCONV_PATH", ErrForbiddenName},
		{"TMPDIR", ErrForbiddenName},
		{"GIT_SSH_COMMAND", ErrForbiddenName},
		{"OPENSSL_CONF", ErrForbiddenName},
		{"MPLBACKEND", ErrForbiddenName},
		{"JULIA_LOAD_PATH", ErrForbiddenName},
		{"NBSECRETS_SOCKET", ErrForbiddenName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.name)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v", tt.name, err)
				}
				if r := Forbidden(tt.name); r != "" {
					t.Errorf("Forbidden(%q) = %q", tt.name, r)
				}
			} else {
				if !errors.Is(err, tt.want) {
					t.Fatalf("ValidateName(%q) = %v, want %v", tt.name, err, tt.want)
				}
				if tt.want == ErrForbiddenName && Forbidden(tt.name) == "" {
					t.Errorf("Forbidden(%q) is empty", tt.name)
				}
			}
			checkAgainstOracle(t, tt.name)
		})
	}
}

// TestValidateNameOracle compares ValidateName with the regular expression
// on every short string over an alphabet that covers each class, and on
// random strings up to and past the length limits.
func TestValidateNameOracle(t *testing.T) {
	alphabet := []string{"a", "Z", "0", "9", "-", "_", ".", " ", "\x00", "é", "\xff", "$"}
	var gen func(prefix string, n int)
	count := 0
	gen = func(prefix string, n int) {
		checkAgainstOracle(t, prefix)
		count++
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, n-1)
		}
	}
	gen("", 4)

	rng := rand.New(rand.NewPCG(1, 2))
	chars := "abcXYZ059-_.:é\x00\n"
	for range 20000 {
		n := rng.IntN(70)
		if rng.IntN(2) == 0 {
			n = 60 + rng.IntN(6) // around the upper limit
		}
		var b strings.Builder
		for i := range n {
			switch {
			case i == 0 && rng.IntN(4) > 0, rng.IntN(8) > 0:
				b.WriteByte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"[rng.IntN(64)])
			default:
				b.WriteString(string(chars[rng.IntN(len(chars))]))
			}
		}
		checkAgainstOracle(t, b.String())
		count++
	}
	t.Logf("%d names checked against the regular expression", count)
}

func TestValidateValue(t *testing.T) {
	tests := []struct {
		name  string
		value []byte
		want  error
	}{
		{"empty", nil, nil},
		{"text", []byte("hunter2"), nil},
		{"unicode and control text", []byte("päss\twörd\n秘密\x7f"), nil},
		{"at the limit", make([]byte, MaxValueSize), ErrNULInValue},
		{"at the limit, text", []byte(strings.Repeat("a", MaxValueSize)), nil},
		{"over the limit", []byte(strings.Repeat("a", MaxValueSize+1)), ErrValueTooLarge},
		{"NUL", []byte("a\x00b"), ErrNULInValue},
		{"NUL first", []byte("\x00"), ErrNULInValue},
		{"invalid UTF-8", []byte("a\xffb"), ErrInvalidValue},
		{"truncated UTF-8", []byte("a\xc3"), ErrInvalidValue},
		{"UTF-16 surrogate", []byte("\xed\xa0\x80"), ErrInvalidValue},
		{"overlong encoding", []byte("\xc0\xaf"), ErrInvalidValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateValue(tt.value)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("ValidateValue = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPrintable(t *testing.T) {
	tests := []struct{ in, want string }{
		{"ws-a.sec-1", "ws-a.sec-1"},
		{"a\nb\x1b[0m\x00", "a?b?[0m?"},
		{"a\xffb", "a?b"},
		{"päss", "päss"},
		{"a\u202eb", "a?b"}, // right-to-left override
		{strings.Repeat("k", 129), strings.Repeat("k", 129)},
		{strings.Repeat("k", 200), strings.Repeat("k", 129) + "..."},
	}
	for _, tt := range tests {
		if got := printable(tt.in); got != tt.want {
			t.Errorf("printable(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestForbiddenIssueNames: every name the review of issue 9 created in a
// shared project, each of which redirects a tool in another member's
// kernel, is refused, and so are close relatives of each class; the
// credentials people really keep in a secrets store are not.
func TestForbiddenIssueNames(t *testing.T) {
	refused := strings.Fields(`LDSHARED CXX CFLAGS LDFLAGS MAKEFLAGS LOCALDOMAIN RES_OPTIONS RSYNC_RSH
		RSYNC_CONNECT_PROG CVS_RSH JAVA_OPTS MAVEN_OPTS SPARK_SUBMIT_OPTS PYSPARK_SUBMIT_ARGS PYSPARK_PYTHON
		HF_ENDPOINT OPENAI_BASE_URL AWS_ENDPOINT_URL AWS_CONFIG_FILE grpc_proxy DOCKER_HOST GOFLAGS
		RUSTC_WRAPPER TCL_LIBRARY TERMINFO_DIRS NETRC LESS
		CPP F77 cxxflags RUSTFLAGS CMAKE_C_COMPILER NVCC_PREPEND_FLAGS AWS_ENDPOINT_URL_S3 ANTHROPIC_BASE_URL
		AZURE_OPENAI_ENDPOINT GOOGLE_APPLICATION_CREDENTIALS KUBECONFIG SSH_AUTH_SOCK GIT_SSH_COMMAND
		SPARK_HOME JAVA_HOME HADOOP_CONF_DIR UV_INDEX_URL PIP_INDEX_URL CONDARC NPM_CONFIG_REGISTRY
		CARGO_HOME GOPROXY SOCKS_PROXY NO_GRPC_PROXY GLIBC_TUNABLES LANG LC_ALL ELIXIR_ERL_OPTIONS
		MLFLOW_TRACKING_URI SSL_CERT_FILE PHPRC GHCRTS LUA_INIT TERM`)
	for _, name := range refused {
		err := ValidateName(name)
		if !errors.Is(err, ErrForbiddenName) {
			t.Errorf("ValidateName(%q) = %v, want a forbidden name", name, err)
			continue
		}
		if !slices.ContainsFunc(ReservedClasses, func(c ReservedClass) bool { return strings.Contains(err.Error(), "("+c.Name+")") }) {
			t.Errorf("ValidateName(%q) = %v: the error does not name the class", name, err)
		}
	}
	allowed := strings.Fields(`DB_PASSWORD DB-PASSWORD OPENAI_API_KEY ANTHROPIC_API_KEY HF_TOKEN
		AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN DATABASE_URL MONGO_URI GITHUB_TOKEN
		SLACK_WEBHOOK_URL WANDB_API_KEY SNOWFLAKE_PASSWORD PGPASSWORD DB_HOST STRIPE_SECRET_KEY api_key`)
	for _, name := range allowed {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v; a credential name must stay allowed", name, err)
		}
	}
}

// TestReservedClassesDocumented: every class says what it is and why, and
// holds names in upper case (Forbidden compares the upper-cased name).
func TestReservedClassesDocumented(t *testing.T) {
	for _, c := range ReservedClasses {
		if c.Name == "" || c.Why == "" || len(c.Exact)+len(c.Prefixes)+len(c.Suffixes) == 0 {
			t.Errorf("class %q is undocumented or empty", c.Name)
		}
		for _, list := range [][]string{c.Exact, c.Prefixes, c.Suffixes} {
			for _, n := range list {
				if n != strings.ToUpper(n) || n == "" {
					t.Errorf("class %q: %q is not upper case", c.Name, n)
				}
			}
		}
	}
}
