package main

import "flag"

// metricsFlag defines --metrics-addr for `nbsecrets agent` (and `dev`): the
// loopback host:port of /healthz, /readyz and /metrics (Prometheus text
// format), e.g. 127.0.0.1:9464. Empty, the default: not served. Wire it as
// agent.Config.MetricsAddr.
func metricsFlag(fs *flag.FlagSet) *string {
	return fs.String("metrics-addr", envOr("NBSECRETS_METRICS_ADDR", ""),
		"serve /healthz, /readyz and /metrics on this loopback host:port, e.g. 127.0.0.1:9464; empty: off ($NBSECRETS_METRICS_ADDR)")
}

// metricsNonLoopbackFlag defines --metrics-non-loopback: allow a
// --metrics-addr other hosts can reach (a container whose scraper is a
// sidecar on another address). Wire it as agent.Config.MetricsNonLoopback.
func metricsNonLoopbackFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("metrics-non-loopback", false,
		"allow a --metrics-addr that is not loopback (the metrics show secret counts and kernel ids, never names or values)")
}
