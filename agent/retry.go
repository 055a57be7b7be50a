package agent

import (
	"errors"
	"time"
)

// errReseedFailed wraps a re-seed the kernel refused or did not finish (it
// raised, or timed out). The worker reconnects and tries the full state
// again after reseedRetryMin, doubling up to reseedRetryMax while the
// failures go on; a re-seed that works resets the delay. Without it a kernel
// whose re-seed always fails (a user's `__import__ = None`) was sent the
// whole environment ten times a second.
var errReseedFailed = errors.New("re-seed failed")

// The re-seed retry delays: 1s, 2s, 4s, ... up to one minute.
const (
	reseedRetryMin = time.Second
	reseedRetryMax = time.Minute
)
