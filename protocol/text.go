package protocol

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// SafeText makes text that came from another process (an agent's or a
// service's error message, anything a responder on NATS could have
// written) safe to print on a terminal or in a log line: invalid UTF-8
// becomes "?", every control character (C0, DEL, C1 such as the 8-bit
// CSI) and every other rune that is not printable (bidirectional
// overrides, zero-width marks) becomes a space, so no escape sequence can
// move the cursor, retitle the window, forge a line or hide text. It keeps
// at most limit bytes (at a rune boundary) and marks a cut with "...".
func SafeText(s string, limit int) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		switch {
		case r == utf8.RuneError:
			return '?'
		case !unicode.IsPrint(r): // IsPrint takes the ASCII space
			return ' '
		}
		return r
	}, s)
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}
