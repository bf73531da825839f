package jobs

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// FuzzIsJobID checks the job ids a user sends (ssi cancel, hold, show): an accepted id is a
// number, or a number and an index, that parse without overflow, so the etcd key built from
// it stays one job's key.
func FuzzIsJobID(f *testing.F) {
	for _, s := range []string{"42", "42_7", "0", "042", "42_", "_7", "42_7_1", "42/../x", "42_-1", "-42", "+42", "４２",
		"999999999999999999", "9999999999999999999", "42_999999999999999999", "", "42 ", "42\x00"} {
		f.Add(s)
	}
	shape := regexp.MustCompile(`^[0-9]{1,18}(_[0-9]{1,18})?$`)
	f.Fuzz(func(t *testing.T, id string) {
		if !isJobID(id) {
			if shape.MatchString(id) {
				t.Fatalf("%q refused", id)
			}
			return
		}
		if !shape.MatchString(id) {
			t.Fatalf("%q accepted", id)
		}
		base, idx, isElem := strings.Cut(id, "_")
		if _, err := strconv.ParseUint(base, 10, 64); err != nil {
			t.Fatalf("%q: base %v", id, err)
		}
		if _, err := strconv.Atoi(idx); isElem && err != nil {
			t.Fatalf("%q: index %v", id, err)
		}
		if k := jobKey(base); strings.Count(k, "/") != strings.Count(prefixJob, "/") {
			t.Fatalf("%q: key %q", id, k)
		}
	})
}
