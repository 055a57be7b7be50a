package agent

import (
	"regexp"
	"strings"
	"testing"
)

// TestIsExceptionName: the hand-written check takes exactly what the
// regular expression it replaces takes.
func TestIsExceptionName(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]{0,63}$`)
	cases := []string{"", "ValueError", "_x", "a.b.C_9", "9a", ".a", "a-b", "a b", "a\n", "é", "KeyError\x00",
		"A" + strings.Repeat("b", 63), "A" + strings.Repeat("b", 64), "x.", "_", "Z9", "a/b"}
	for c := 0; c < 256; c++ {
		cases = append(cases, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
	}
	for _, s := range cases {
		if got, want := isExceptionName(s), re.MatchString(s); got != want {
			t.Errorf("isExceptionName(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
