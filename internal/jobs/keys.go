package jobs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ssi-cluster/ssi/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every key of the job system lives under prefix, so one watch feeds the scheduler's cache.
const prefix = store.Prefix + "jobs/"

// Key prefixes (see the package documentation for what each holds).
const (
	keyNextID = prefix + "next-id"
	keyUsage  = prefix + "usage"
	// nameElection is the name etcd's election recipe takes; it keeps each candidate at
	// prefixElection followed by the candidate's lease ID in hex (electionKey).
	nameElection   = prefix + "leader"
	prefixElection = nameElection + "/"
	prefixJob      = prefix + "job/"
	prefixHist     = prefix + "hist/"
	prefixNode     = prefix + "node/"
	prefixPart     = prefix + "part/"
	prefixDone     = prefix + "done/"
	prefixAttempt  = prefix + "attempt/"
	prefixReason   = prefix + "reason/"
	prefixGrant    = prefix + "grant/"
	prefixSession  = prefix + "session/"
	prefixQueue    = prefix + "queue/"
	prefixDrain    = prefix + "drain/"
)

func jobKey(id string) string              { return prefixJob + id }
func histKey(id string) string             { return prefixHist + id }
func nodePrefix(node string) string        { return prefixNode + node + "/" }
func allocKey(node, task string) string    { return prefixNode + node + "/alloc/" + task }
func signalKey(node, task string) string   { return prefixNode + node + "/signal/" + task }
func partKey(task, node string) string     { return prefixPart + task + "/" + node }
func doneKey(task string) string           { return prefixDone + task }
func attemptKey(task string, n int) string { return prefixAttempt + task + "/" + strconv.Itoa(n) }
func attemptPrefix(task string) string     { return prefixAttempt + task + "/" }
func reasonKey(job string) string          { return prefixReason + job }
func grantKey(task string) string          { return prefixGrant + task }
func sessionKey(task string) string        { return prefixSession + task }
func queueKey(name string) string          { return prefixQueue + name }
func drainKey(node string) string          { return prefixDrain + node }

// keyKind says what a key under prefix is, with the names it carries.
type keyKind int

const (
	kindOther keyKind = iota
	kindJob
	kindHist
	kindAlloc
	kindSignal
	kindPart
	kindDone
	kindAttempt
	kindReason
	kindGrant
	kindSession
	kindQueue
	kindDrain
	kindUsage
)

// parsedKey is a key split into its kind and names: a is the job, task or queue; b the node or
// attempt number.
type parsedKey struct {
	kind keyKind
	a, b string
}

func parseKey(key string) parsedKey {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return parsedKey{}
	}
	if rest == "usage" {
		return parsedKey{kind: kindUsage}
	}
	kind, name, ok := strings.Cut(rest, "/")
	if !ok || name == "" {
		return parsedKey{}
	}
	one := func(k keyKind) parsedKey {
		if strings.Contains(name, "/") {
			return parsedKey{}
		}
		return parsedKey{kind: k, a: name}
	}
	two := func(k keyKind) parsedKey {
		a, b, ok := strings.Cut(name, "/")
		if !ok || a == "" || b == "" || strings.Contains(b, "/") {
			return parsedKey{}
		}
		return parsedKey{kind: k, a: a, b: b}
	}
	switch kind {
	case "job":
		return one(kindJob)
	case "hist":
		return one(kindHist)
	case "done":
		return one(kindDone)
	case "reason":
		return one(kindReason)
	case "grant":
		return one(kindGrant)
	case "session":
		return one(kindSession)
	case "queue":
		return one(kindQueue)
	case "drain":
		return one(kindDrain)
	case "part":
		return two(kindPart)
	case "attempt":
		return two(kindAttempt)
	case "node":
		// node/<node>/alloc/<task> and node/<node>/signal/<task>
		parts := strings.Split(name, "/")
		if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
			return parsedKey{}
		}
		switch parts[1] {
		case "alloc":
			return parsedKey{kind: kindAlloc, a: parts[2], b: parts[0]}
		case "signal":
			return parsedKey{kind: kindSignal, a: parts[2], b: parts[0]}
		}
	}
	return parsedKey{}
}

// electionKey is the key etcd's election recipe gives the candidate holding lease.
func electionKey(lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s%x", prefixElection, lease)
}
