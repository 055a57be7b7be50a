package controlplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// fanoutWorkers bounds the chunks of records one publish seals and writes
// at once: the writes are pipelined on the service's connection rather
// than made one round trip at a time.
const fanoutWorkers = 64

// minChunk and maxChunk bound the records of one chunk, which one batch
// signature covers (protocol.Batch): the chunks are len(m.Sent) /
// fanoutWorkers records long within these bounds, so that each worker
// signs about once and a record's audit path stays at 8 hashes or fewer.
// chunkBytes bounds the bytes of records a worker holds at once, before
// the bounds: a chunk of large values is shorter (fanoutWorkers chunks of
// 256 records of the largest value would hold 3 GB).
const (
	minChunk   = 16
	maxChunk   = 256
	chunkBytes = 1 << 20
)

// chunkSize is the length of the chunks of a fan-out to n workspaces of a
// value of valueLen bytes.
func chunkSize(n, valueLen int) int {
	chunk := min(max((n+fanoutWorkers-1)/fanoutWorkers, minChunk), maxChunk)
	return min(chunk, max(1, chunkBytes/recordBytes(valueLen)))
}

// recordBytes is about what a worker holds of one record of a value of
// valueLen bytes: the record (the sealed value in base64 within JSON,
// which is base64 again in the box) and its encoded form (base64 of that).
func recordBytes(valueLen int) int {
	rec := (valueLen*4/3+100)*4/3 + 400
	return rec + rec*4/3 + 900
}

// perRecordTime is how much longer than requestTimeout a request may take
// per workspace in the directory: a fan-out to thousands of workspaces cut
// short would leave them at different versions until the next
// reconciliation.
const perRecordTime = 10 * time.Millisecond

// publish writes m's record for every workspace that ever had the secret:
// the value for those in m.Visible that d still holds, a tombstone for the
// others. Each record carries the scope by which its workspace may have
// the secret (m.recordScope). The workspaces go in chunks to up to
// fanoutWorkers workers. A worker finds what each key of its chunk holds,
// from the revisions this service wrote or verified before (s.revs) or
// else by reading and verifying the record there, leaves the keys at the
// version already, seals the others' records and signs them with one
// batch signature (a Merkle tree's root, protocol.Batch). Each goes out as
// an asynchronous publish with the compare-and-set header on the revision
// found (none: the key must not exist), up to asyncInFlight of them
// unanswered, so that the writes are not one round trip each; any that
// fails (someone else wrote the key, a timeout) is written by writeRecord,
// which reads the key again. A single workspace gets a single record,
// signed alone, through writeRecord.
func (s *Service) publish(ctx context.Context, m *secretMeta, value []byte, d *directory) error {
	now := s.now()
	visible := make(map[string]bool, len(m.Visible))
	for _, ws := range m.Visible {
		visible[ws] = true
	}
	// put reports whether ws gets the value, and to which key.
	put := func(ws string) (protocol.Recipient, bool) {
		if w, ok := d.workspace(ws); ok && visible[ws] {
			return protocol.Recipient{Workspace: ws, CurveKey: w.CurveKey}, true
		}
		return protocol.Recipient{}, false
	}
	builder := func(ws string) func() ([]byte, error) {
		scope := m.recordScope(ws)
		return func() ([]byte, error) {
			if to, ok := put(ws); ok {
				return s.sealer.Put(to, m.ID, m.Name, m.Version, scope, value, now)
			}
			return s.sealer.Delete(ws, m.ID, m.Name, m.Version, scope, now)
		}
	}
	slow := func(ws string, build func() ([]byte, error)) error {
		if err := s.writeRecord(ctx, ws, m.ID, m.Version, build); err != nil {
			return fmt.Errorf("record of %s for workspace %s: %w", m.ID, ws, err)
		}
		return nil
	}
	if len(m.Sent) == 1 {
		return slow(m.Sent[0], builder(m.Sent[0]))
	}
	pub, err := jetstream.New(s.nc, jetstream.WithPublishAsyncMaxPending(asyncInFlight),
		jetstream.WithPublishAsyncTimeout(requestTimeout))
	if err != nil {
		return fmt.Errorf("records of %s: %w", m.ID, err)
	}
	defer pub.CleanupPublisher()
	chunk := chunkSize(len(m.Sent), len(value))
	work := make(chan []string)
	sent := make(chan asyncRecord, asyncInFlight)
	errc := make(chan error, len(m.Sent))
	workers := min(fanoutWorkers, (len(m.Sent)+chunk-1)/chunk)
	var wg, settlers sync.WaitGroup
	for range workers {
		wg.Go(func() { // owned by publish: ends when work is closed
			for wss := range work {
				// One result on errc per workspace of the chunk: from
				// here, from slow or from a settler.
				b := s.sealer.NewBatch()
				batched := make([]string, 0, len(wss))
				haves := make([]revVer, 0, len(wss))
				for _, ws := range wss {
					// What the key holds, from the cache or read (as
					// writeRecord would): nothing is sealed for a key at
					// the version already.
					key := protocol.RecordKey(ws, m.ID)
					have, known := s.revs.get(key)
					if !known {
						var err error
						if have, err = s.readRev(ctx, ws, key); err != nil {
							errc <- slow(ws, builder(ws)) // writeRecord reads again and reports
							continue
						}
					}
					if have.version >= m.Version {
						errc <- nil
						continue
					}
					var err error
					if to, ok := put(ws); ok {
						_, err = b.Put(to, m.ID, m.Name, m.Version, m.recordScope(ws), value, now)
					} else {
						_, err = b.Delete(ws, m.ID, m.Name, m.Version, m.recordScope(ws), now)
					}
					if err != nil {
						errc <- slow(ws, builder(ws)) // writeRecord reports the error if it must write
						continue
					}
					batched = append(batched, ws)
					haves = append(haves, have)
				}
				sign := b.Sign
				if s.single {
					sign = b.SignEach
				}
				records, err := sign()
				if err != nil {
					s.log.Warn("batch signature failed: signing each record alone", "secret", m.ID, "records", len(batched), "error", err)
					for _, ws := range batched {
						errc <- slow(ws, builder(ws))
					}
					continue
				}
				for i, ws := range batched {
					data := records[i]
					if a, ok := s.publishAsync(pub, ws, m.ID, haves[i], data); ok {
						sent <- a
						continue
					}
					errc <- slow(ws, func() ([]byte, error) { return data, nil })
				}
			}
		})
	}
	for range min(fanoutWorkers, len(m.Sent)) {
		settlers.Go(func() { // owned by publish: ends when sent is closed
			for a := range sent {
				select {
				case ack := <-a.fut.Ok():
					s.revs.put(a.key, revVer{rev: ack.Sequence, version: m.Version})
					if s.wroteHook != nil {
						s.wroteHook()
					}
					errc <- nil
				case <-a.fut.Err():
					// A lost compare-and-set or no answer: read the key
					// and write again if it is still behind.
					s.revs.drop(a.key)
					data := a.data
					errc <- slow(a.ws, func() ([]byte, error) { return data, nil })
				}
			}
		})
	}
	for i := 0; i < len(m.Sent); i += chunk {
		work <- m.Sent[i:min(i+chunk, len(m.Sent))]
	}
	close(work)
	wg.Wait()
	close(sent)
	settlers.Wait()
	close(errc)
	var errs []error
	failed := 0
	for err := range errc {
		if err != nil {
			// A reply carries the error: thousands of them would not fit.
			if failed++; failed <= maxReportedFailures {
				errs = append(errs, err)
			}
		}
	}
	if failed > maxReportedFailures {
		errs = append(errs, fmt.Errorf("and %d more records of %s not written", failed-maxReportedFailures, m.ID))
	}
	return errors.Join(errs...)
}

// asyncInFlight bounds the asynchronous record publishes of one publish
// call that the server has not answered yet.
const asyncInFlight = 512

// recordSubject is the subject of the record under key in the records
// bucket, as the KV API publishes it.
func recordSubject(key string) string { return "$KV." + protocol.Bucket + "." + key }

// asyncRecord is a record published asynchronously, not answered yet.
type asyncRecord struct {
	ws, key string
	data    []byte
	fut     jetstream.PubAckFuture
}

// publishAsync publishes data, a record of secret id for workspace ws,
// under its key with compare-and-set on have.rev, the revision the key was
// at when it was found older than data (0: no record). It reports false
// when the publish failed: the caller then uses writeRecord.
func (s *Service) publishAsync(pub jetstream.JetStream, ws, id string, have revVer, data []byte) (asyncRecord, bool) {
	key := protocol.RecordKey(ws, id)
	fut, err := pub.PublishMsgAsync(&nats.Msg{Subject: recordSubject(key), Data: data},
		jetstream.WithExpectLastSequencePerSubject(have.rev))
	if err != nil {
		return asyncRecord{}, false
	}
	return asyncRecord{ws: ws, key: key, data: data, fut: fut}, true
}

// readRev reads the record under key, ws's, and returns its revision and
// version (see recordVersion), which it caches; a missing key is
// revVer{}, not cached.
func (s *Service) readRev(ctx context.Context, ws, key string) (revVer, error) {
	e, err := s.records.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return revVer{}, nil
	case err != nil:
		return revVer{}, err
	}
	v, err := s.recordVersion(ws, key, e.Value())
	if err != nil {
		return revVer{}, err
	}
	have := revVer{rev: e.Revision(), version: v}
	s.revs.put(key, have)
	return have, nil
}

// writeRecord puts the record that build returns under the workspace's key
// for the secret unless the record there already has version or a later
// one, with compare-and-set: when two writers race, the later version
// stays. It calls build only when it writes. The revision it compares with
// comes from s.revs when this service wrote or verified the key before,
// else from reading and verifying the record there.
func (s *Service) writeRecord(ctx context.Context, ws, id string, version uint64, build func() ([]byte, error)) error {
	key := protocol.RecordKey(ws, id)
	var data []byte
	for attempt := 0; ; attempt++ {
		have, known := s.revs.get(key)
		if !known {
			var err error
			if have, err = s.readRev(ctx, ws, key); err != nil {
				return fmt.Errorf("writing %s: %w", key, err)
			}
		}
		if have.version >= version {
			return nil
		}
		if data == nil {
			var err error
			if data, err = build(); err != nil {
				return err
			}
		}
		var rev uint64
		var err error
		if have.rev == 0 {
			rev, err = s.records.Create(ctx, key, data)
		} else {
			rev, err = s.records.Update(ctx, key, data, have.rev)
		}
		if err == nil {
			s.revs.put(key, revVer{rev: rev, version: version})
			if s.wroteHook != nil {
				s.wroteHook()
			}
			return nil
		}
		s.revs.drop(key)
		if (errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)) && attempt < maxCASRetries {
			continue
		}
		return fmt.Errorf("writing %s: %w", key, err)
	}
}

// recordVersion is the version of the record data under key in workspace
// ws when it is one we signed, 0 when it is not (garbage, or signed by
// another key): writeRecord then replaces it. An error means that records
// cannot be checked at all; writeRecord must not write then, since without
// the version check an older record could replace a newer one.
func (s *Service) recordVersion(ws, key string, data []byte) (uint64, error) {
	o, err := s.opener(ws)
	if err != nil {
		return 0, err
	}
	s.verified.Add(1)
	r, err := o.Verify(key, data)
	if err != nil {
		s.log.Warn("replacing a record that is not ours", "key", key, "error", err)
		return 0, nil
	}
	return r.Version, nil
}

// opener returns the verify-only Opener that checks our records for
// workspace ws (signature, workspace, key) to read their versions.
func (s *Service) opener(ws string) (*protocol.Opener, error) {
	if o, ok := s.openers.Load(ws); ok {
		return o.(*protocol.Opener), nil
	}
	o, err := protocol.NewVerifier(ws, []string{s.signPub})
	if err != nil {
		return nil, fmt.Errorf("cannot verify records of workspace %s: %w", ws, err)
	}
	actual, _ := s.openers.LoadOrStore(ws, o)
	return actual.(*protocol.Opener), nil
}
