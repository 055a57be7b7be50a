package web

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkAPI measures the HTTP API's latency, end to end over loopback
// TCP against the real service on an embedded NATS server with JetStream:
// GET api/v1/secrets (a user who sees 50 secrets) and PATCH
// api/v1/secrets/{id} with a new value (which looks the secret up, then
// writes and publishes its records to two workspaces). It reports p50 and
// p99 of each request in ms (`make bench` runs it with -benchtime 300x).
func BenchmarkAPI(b *testing.B) {
	f := newFixture(b)
	alice := f.as("alice")
	var id string
	for i := range 50 {
		s := alice.create(fmt.Sprintf("BENCH_%02d", i), []string{"", "ml"}[i%2], secretValue("bench"))
		id = s.ID
	}
	value := secretValue("bench-update")
	for _, bc := range []struct {
		name string
		req  func(i int)
	}{
		{"list", func(int) { alice.api("GET", "/secrets", nil, http.StatusOK, nil) }},
		{"update", func(i int) {
			alice.api("PATCH", "/secrets/"+id, map[string]string{"value": fmt.Sprintf("%s-%d", value, i)}, http.StatusOK, nil)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				bc.req(i)
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			pct := func(p float64) float64 {
				if len(lat) == 0 {
					return 0
				}
				k := int(float64(len(lat))*p+0.999999) - 1 // nearest rank
				k = max(0, min(k, len(lat)-1))
				return float64(lat[k].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
