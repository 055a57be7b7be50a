package controlplane

import "errors"

// Errors of the service's operations. The service sends them as codes; a
// Client maps a code back to its sentinel, so errors.Is works on both sides
// of NATS. They never contain a value.
var (
	ErrNotFound        = errors.New("controlplane: secret not found")
	ErrExists          = errors.New("controlplane: secret already exists")
	ErrUnauthenticated = errors.New("controlplane: request not authenticated")
	ErrForbidden       = errors.New("controlplane: not allowed")
	ErrInvalid         = errors.New("controlplane: invalid request")
	ErrAmbiguous       = errors.New("controlplane: secret name is ambiguous")
	// ErrConflict: the secret changed while the request was carried out
	// (renamed, shared or unshared meanwhile); trying again may work.
	ErrConflict    = errors.New("controlplane: secret changed meanwhile")
	ErrUnavailable = errors.New("controlplane: secrets service unavailable")
	ErrInternal    = errors.New("controlplane: service error")
)

// errorCodes pairs each sentinel with its code on the wire. ErrUnavailable
// has none: the client makes it when no reply comes.
var errorCodes = []struct {
	err  error
	code string
}{
	{ErrNotFound, "not_found"},
	{ErrExists, "exists"},
	{ErrUnauthenticated, "unauthenticated"},
	{ErrForbidden, "forbidden"},
	{ErrInvalid, "invalid"},
	{ErrAmbiguous, "ambiguous"},
	{ErrConflict, "conflict"},
	{ErrInternal, "internal"},
}

// codeOf is the wire code of err: the code of the first sentinel it wraps,
// else "internal".
func codeOf(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

// remoteError is an error the service replied with. Its message is the
// service's; it unwraps to the sentinel of its code.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// fromCode rebuilds the service's error on the client side.
func fromCode(code, msg string) error {
	sentinel := ErrInternal
	for _, c := range errorCodes {
		if c.code == code {
			sentinel = c.err
			break
		}
	}
	if msg == "" {
		msg = sentinel.Error()
	}
	return &remoteError{sentinel: sentinel, msg: msg}
}
