//go:build race

package hub

// raceDetector: the race detector slows everything down tenfold, so
// measurements are skipped under it.
const raceDetector = true
