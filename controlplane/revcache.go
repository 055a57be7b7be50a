package controlplane

import "sync"

// maxCachedRevisions bounds the revision cache; when full it starts over.
const maxCachedRevisions = 1 << 20

// revVer is what a record key holds as far as this service knows: the KV
// revision and the version of the record at that revision (0: not ours).
type revVer struct {
	rev, version uint64
}

// revCache remembers, per record key, the revision at which this service
// last wrote or verified a record and that record's version, so that the
// next write can go straight to a compare-and-set on that revision without
// reading and verifying the record it replaces. The compare-and-set is
// what keeps it correct: when anyone else wrote the key since, the write
// fails, the entry is dropped and the key is read again.
type revCache struct {
	mu sync.Mutex
	m  map[string]revVer
}

func (c *revCache) get(key string) (revVer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rv, ok := c.m[key]
	return rv, ok
}

func (c *revCache) put(key string, rv revVer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedRevisions {
		c.m = make(map[string]revVer)
	}
	c.m[key] = rv
}

func (c *revCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}

// reset forgets everything, so that the next writes read what the bucket
// really holds (reconciliation: the bucket may have lost records).
func (c *revCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
}
