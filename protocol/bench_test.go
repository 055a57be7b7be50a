package protocol

import (
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
