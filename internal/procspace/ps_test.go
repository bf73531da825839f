package procspace

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"sleep 10":          "sleep 10",
		"sh -c echo\thi\n":  "sh -c echo?hi?",
		"caf\xe9 \xff\xfe":  "caf? ??",
		"café ünïcode":      "café ünïcode",
		"esc \x1b[2J clear": "esc ?[2J clear",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRecordRunningUntilReaped(t *testing.T) {
	r := &record{done: make(chan struct{})}
	if !r.running() {
		t.Fatal("a record not yet reaped is not running")
	}
	close(r.done)
	// Its pid may now be another process's, which ps must not show as started by ssi.
	if r.running() {
		t.Fatal("a reaped record is still running")
	}
}
