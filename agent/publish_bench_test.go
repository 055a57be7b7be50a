package agent

import (
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// BenchmarkPublishWakesWorker measures one stage of a live change: from the
// syncer's publish of a new record to the moment a kernel's worker,
// subscribed to the store, runs; with the state file written after each
// publish, as the agent does, and without. It reports the median and the
// 99th percentile wake-up in µs. (The syncer yields before writing the
// file: without that, the worker waited in the syncer's P for the file's
// create, write and rename.)
func BenchmarkPublishWakesWorker(b *testing.B) {
	for _, withState := range []bool{false, true} {
		b.Run("state="+strconv.FormatBool(withState), func(b *testing.B) {
			st := newStore(Workspace{ID: "ws-1", Owner: "user-1"})
			s := &syncer{st: st, log: hclog.NewNullLogger(), now: time.Now}
			if withState {
				state := &stateStore{path: filepath.Join(b.TempDir(), "state.json"), ws: "ws-1", keys: []string{"k"}}
				s.published = func() {
					if err := state.save(st.versionsCopy()); err != nil {
						b.Error(err)
					}
				}
			}
			wake, unsubscribe := st.subscribe()
			defer unsubscribe()
			woke := make(chan time.Time)
			stop := make(chan struct{})
			go func() { // the worker: ends with stop
				for {
					select {
					case <-stop:
						return
					case <-wake:
						woke <- time.Now()
					}
				}
			}()
			defer close(stop)
			scope := protocol.Scope{Kind: protocol.ScopeUser, ID: "user-1"}
			var lat []float64
			ver := uint64(0)
			for b.Loop() {
				ver++
				if err := st.apply(put("sec-1", "TOKEN", ver, scope, "v"), time.Now()); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				s.publish()
				lat = append(lat, float64((<-woke).Sub(t0).Microseconds()))
			}
			slices.Sort(lat)
			b.ReportMetric(lat[len(lat)/2], "wake-µs-p50")
			b.ReportMetric(lat[len(lat)*99/100], "wake-µs-p99")
		})
	}
}
