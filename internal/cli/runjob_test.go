package cli

import (
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// The terminal is raw between enter and leave, and never raw again once closed: a stop handled
// late (its SIGCONT came as the command ended) must not leave the user's terminal raw.
func TestRawTerminal(t *testing.T) {
	ptm, pts, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptm.Close()
	defer pts.Close()
	raw := func() bool {
		tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return tio.Lflag&unix.ICANON == 0
	}
	term := &rawTerminal{fd: int(pts.Fd())}
	for _, step := range []struct {
		name string
		do   func()
		raw  bool
	}{
		{"enter", term.enter, true},
		{"enter again", term.enter, true},
		{"leave", term.leave, false},
		{"enter after leave", term.enter, true},
		{"close", term.close, false},
		{"enter after close", term.enter, false},
	} {
		step.do()
		if got := raw(); got != step.raw {
			t.Fatalf("after %s: raw %v, want %v", step.name, got, step.raw)
		}
	}
	var none *rawTerminal
	none.enter()
	none.leave()
	none.close()
}
