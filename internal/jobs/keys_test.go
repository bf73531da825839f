package jobs

import "testing"

func TestParseKey(t *testing.T) {
	tests := []struct {
		key  string
		want parsedKey
	}{
		{jobKey("42"), parsedKey{kind: kindJob, a: "42"}},
		{histKey("42"), parsedKey{kind: kindHist, a: "42"}},
		{allocKey("n1", "42_7"), parsedKey{kind: kindAlloc, a: "42_7", b: "n1"}},
		{signalKey("n2", "42"), parsedKey{kind: kindSignal, a: "42", b: "n2"}},
		{partKey("42", "n3"), parsedKey{kind: kindPart, a: "42", b: "n3"}},
		{doneKey("42_7"), parsedKey{kind: kindDone, a: "42_7"}},
		{attemptKey("42", 3), parsedKey{kind: kindAttempt, a: "42", b: "3"}},
		{reasonKey("42"), parsedKey{kind: kindReason, a: "42"}},
		{grantKey("42"), parsedKey{kind: kindGrant, a: "42"}},
		{sessionKey("42"), parsedKey{kind: kindSession, a: "42"}},
		{queueKey("debug"), parsedKey{kind: kindQueue, a: "debug"}},
		{drainKey("n1"), parsedKey{kind: kindDrain, a: "n1"}},
		{keyUsage, parsedKey{kind: kindUsage}},
		{keyNextID, parsedKey{}},
		{bootKey("n1"), parsedKey{}},
		{prefixElection + "abc", parsedKey{}},
		{prefixJob, parsedKey{}},
		{prefixJob + "a/b", parsedKey{}},
		{prefix + "node/n1/other/x", parsedKey{}},
		{"/elsewhere/job/1", parsedKey{}},
	}
	for _, tt := range tests {
		if got := parseKey(tt.key); got != tt.want {
			t.Errorf("parseKey(%q) = %+v, want %+v", tt.key, got, tt.want)
		}
	}
}

func TestIDsAndNames(t *testing.T) {
	for s, want := range map[string]bool{"42": true, "42_7": true, "0": true, "": false, "42_": false, "_7": false, "4a": false, "1_2_3": false, "-1": false} {
		if got := isJobID(s); got != want {
			t.Errorf("isJobID(%q) = %t", s, got)
		}
	}
	for s, want := range map[string]bool{"batch": true, "gpu-1.x_y": true, "": false, ".x": false, "a/b": false, "a b": false} {
		if got := isQueueName(s); got != want {
			t.Errorf("isQueueName(%q) = %t", s, got)
		}
	}
}

func TestCanonicalID(t *testing.T) {
	for in, want := range map[string]string{
		"42": "42", "042": "42", "0": "0", "00": "0", "7_02": "7_2", "07_0": "7_0", "7_000": "7_0",
		"abc": "abc", "7_": "7_", "": "",
	} {
		if got := canonicalID(in); got != want {
			t.Errorf("canonicalID(%q) = %q, want %q", in, got, want)
		}
	}
}
