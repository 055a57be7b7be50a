package protocol

import (
	"bytes"
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

// ValidateValue reports whether v may be a secret value: UTF-8 text without
// NUL bytes (an environment cannot hold NUL), at most MaxValueSize bytes. The
// error never contains the value.
func ValidateValue(v []byte) error {
	if len(v) > MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(v), MaxValueSize)
	}
	if i := bytes.IndexByte(v, 0); i >= 0 {
		return fmt.Errorf("%w at offset %d", ErrNULInValue, i)
	}
	if !utf8.Valid(v) {
		return ErrInvalidValue
	}
	return nil
}
