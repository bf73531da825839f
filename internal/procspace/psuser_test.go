package procspace

import (
	"errors"
	osuser "os/user"
	"strings"
	"testing"
)

func TestCheckPsUser(t *testing.T) {
	lookup := func(name string) (*osuser.User, error) {
		switch name {
		case "alice":
			return &osuser.User{Username: "alice", Uid: "1000"}, nil
		case "broken":
			return nil, errors.New("passwd unreadable")
		}
		return nil, osuser.UnknownUserError(name)
	}
	for _, tc := range []struct {
		user, wantErr string
	}{
		{"", ""},
		{"alice", ""},
		{"1000", ""},
		{"4294967294", ""}, // a uid without a passwd entry still owns processes
		{"mallory", "-u mallory: no such user: give a user name or a numeric uid"},
		{"broken", "looking the user up: passwd unreadable"},
		{"-1", "no such user"},
	} {
		err := checkPsUser(tc.user, lookup)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("checkPsUser(%q) = %v, want %q", tc.user, err, tc.wantErr)
		}
	}
}
