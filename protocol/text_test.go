package protocol

import (
	"strings"
	"testing"
)

func TestSafeText(t *testing.T) {
	tests := []struct {
		in    string
		limit int
		want  string
	}{
		{"Updated secret X", 100, "Updated secret X"},
		{"red \x1b[31mtext\x1b[0m", 100, "red  [31mtext [0m"},
		{"title \x1b]0;pwned\x07", 100, "title  ]0;pwned "},
		{"8-bit CSI \u009b2J", 100, "8-bit CSI  2J"},
		{"line\nforged: ok\r", 100, "line forged: ok "},
		{"bidi \u202eevil", 100, "bidi  evil"},
		{"bad \xff utf8", 100, "bad ? utf8"},
		{"päss 秘密", 100, "päss 秘密"},
		{strings.Repeat("a", 10), 4, "aaaa..."},
		{"ab秘", 4, "ab..."},
	}
	for _, tt := range tests {
		if got := SafeText(tt.in, tt.limit); got != tt.want {
			t.Errorf("SafeText(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
		}
	}
}
