package sched

import (
	"math"
	"time"
)

// Usage is each user's decayed cpu consumption, the measure fair-share orders users by: work
// done one half-life ago counts half. It is plain data, not safe for concurrent use; the
// controller owns one, feeds it cpu-seconds as jobs run and persists Snapshot.
type Usage struct {
	halfLife time.Duration
	users    map[string]usageRecord
}

type usageRecord struct {
	value float64 // cpu-seconds, decayed to at
	at    time.Time
}

// NewUsage makes an empty table. A halfLife of zero or less turns decay off.
func NewUsage(halfLife time.Duration) *Usage {
	return &Usage{halfLife: halfLife, users: make(map[string]usageRecord)}
}

// decay is the factor that carries a value from one time to a later one.
func (u *Usage) decay(from, to time.Time) float64 {
	if u.halfLife <= 0 || !to.After(from) {
		return 1
	}
	return math.Exp2(-float64(to.Sub(from)) / float64(u.halfLife))
}

// Add records cpuSeconds used by user at time at. Amounts that are not positive finite numbers
// are ignored. An amount dated before the user's last record is decayed to that record's time,
// so out-of-order reports still count by their age.
func (u *Usage) Add(user string, cpuSeconds float64, at time.Time) {
	if !(cpuSeconds > 0) || math.IsInf(cpuSeconds, 1) {
		return
	}
	rec, ok := u.users[user]
	switch {
	case !ok:
		rec = usageRecord{value: cpuSeconds, at: at}
	case at.After(rec.at):
		rec = usageRecord{value: rec.value*u.decay(rec.at, at) + cpuSeconds, at: at}
	default:
		rec.value += cpuSeconds * u.decay(at, rec.at)
	}
	u.users[user] = rec
}

// Get is user's decayed usage as of at; 0 for a user never seen.
func (u *Usage) Get(user string, at time.Time) float64 {
	rec, ok := u.users[user]
	if !ok {
		return 0
	}
	return rec.value * u.decay(rec.at, at)
}

// Snapshot is every user's usage as of at, for persisting; Add each entry at the same time into
// a new table to restore it.
func (u *Usage) Snapshot(at time.Time) map[string]float64 {
	out := make(map[string]float64, len(u.users))
	for user := range u.users {
		out[user] = u.Get(user, at)
	}
	return out
}
