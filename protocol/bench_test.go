package protocol

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkPut and BenchmarkOpen measure one record of a small and of the
// largest value: signing plus sealing, and verifying plus opening.
var benchSizes = []struct {
	name string
	size int
}{{"32B", 32}, {"64KiB", MaxValueSize}}

func BenchmarkPut(b *testing.B) {
	f := newFixture(b)
	for _, bs := range benchSizes {
		value := []byte(strings.Repeat("v", bs.size))
		b.Run(bs.name, func(b *testing.B) {
			b.SetBytes(int64(bs.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.sealer.Put(f.toA, "sec-1", "DB-PASSWORD", 1, f.scope, value, f.now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	f := newFixture(b)
	key := RecordKey(wsA, "sec-1")
	for _, bs := range benchSizes {
		data := f.put(b, f.toA, "sec-1", "DB-PASSWORD", 1, strings.Repeat("v", bs.size))
		b.Run(bs.name, func(b *testing.B) {
			b.SetBytes(int64(bs.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.openA.Open(key, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenParts measures what Open cannot avoid, for the same records
// as BenchmarkOpen: the ed25519 check of the signed bytes and the opening
// of the box. Open less these is the cost of reading the three layers.
func BenchmarkOpenParts(b *testing.B) {
	f := newFixture(b)
	for _, bs := range benchSizes {
		data := f.put(b, f.toA, "sec-1", "DB-PASSWORD", 1, strings.Repeat("v", bs.size))
		_, signed, sig, _, err := readEnvelope(data)
		if err != nil {
			b.Fatal(err)
		}
		r, err := readRecord(signed[len(signingDomain):])
		if err != nil {
			b.Fatal(err)
		}
		b.Run("verify/"+bs.name, func(b *testing.B) {
			b.SetBytes(int64(bs.size))
			for b.Loop() {
				if f.openA.signers[0].Verify(signed, sig) != nil {
					b.Fatal("bad signature")
				}
			}
		})
		b.Run("box/"+bs.name, func(b *testing.B) {
			b.SetBytes(int64(bs.size))
			for b.Loop() {
				plain, err := openPrecomputed(r.Sealed, f.openA.shared)
				if err != nil {
					b.Fatal(err)
				}
				clear(plain)
			}
		})
	}
}

// BenchmarkBatchSign measures a fan-out chunk's records made with one
// batch signature, per record: sealing, encoding, the tree, a 256th of a
// signature. Compare BenchmarkPut/32B, one signature per record.
func BenchmarkBatchSign(b *testing.B) {
	f := newFixture(b)
	value := []byte(strings.Repeat("v", 32))
	for _, n := range []int{16, 256} {
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				batch := f.sealer.NewBatch()
				for range n {
					if _, err := batch.Put(f.toA, "sec-1", "DB-PASSWORD", 1, f.scope, value, f.now); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := batch.Sign(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
		})
	}
}

// BenchmarkBatchOpen is BenchmarkOpen/32B for a record of a batch of 256
// (an audit path of 8 hashes): what an agent pays for the batch form.
func BenchmarkBatchOpen(b *testing.B) {
	f := newFixture(b)
	entries := make([]batchEntry, 256)
	for i := range entries {
		entries[i] = batchEntry{to: f.toA, id: "sec-1", value: strings.Repeat("v", 32)}
	}
	data := f.batch(b, 1, entries...)[200]
	key := RecordKey(wsA, "sec-1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.openA.Open(key, data); err != nil {
			b.Fatal(err)
		}
	}
}
