package jobs

import (
	"encoding/json"
	"unicode/utf8"
)

// anyBytes is text of any bytes in a record: an argument, a path, an environment entry, which
// the kernel takes as bytes and need not be UTF-8. encoding/json would turn such bytes into
// U+FFFD, so text that is not UTF-8 is stored as {"base64": "..."}; UTF-8 text stays a plain
// JSON string, as records always had it.
type anyBytes string

type base64Text struct {
	Base64 []byte `json:"base64"`
}

func (t anyBytes) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(t)) {
		return json.Marshal(string(t))
	}
	return json.Marshal(base64Text{[]byte(t)})
}

func (t *anyBytes) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		var v base64Text
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*t = anyBytes(v.Base64)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*t = anyBytes(s)
	return nil
}

// recast converts a list of one string type into another.
func recast[To, From ~string](in []From) []To {
	if in == nil {
		return nil
	}
	out := make([]To, len(in))
	for i, s := range in {
		out[i] = To(s)
	}
	return out
}

// plainSpec is jobSpec without its JSON methods, for them to build on.
type plainSpec jobSpec

// specJSON is a jobSpec as stored: the fields that carry the user's bytes (arguments,
// environment, paths) are anyBytes; they hide jobSpec's own fields of the same names.
type specJSON struct {
	*plainSpec
	Args       []anyBytes `json:"args,omitempty"`
	ScriptName anyBytes   `json:"script_name,omitempty"`
	Cwd        anyBytes   `json:"cwd"`
	Env        []anyBytes `json:"env,omitempty"`
	Output     anyBytes   `json:"output"`
	Error      anyBytes   `json:"error,omitempty"`
}

func (sp jobSpec) MarshalJSON() ([]byte, error) {
	return json.Marshal(specJSON{
		plainSpec: (*plainSpec)(&sp), Args: recast[anyBytes](sp.Args), ScriptName: anyBytes(sp.ScriptName),
		Cwd: anyBytes(sp.Cwd), Env: recast[anyBytes](sp.Env), Output: anyBytes(sp.Output), Error: anyBytes(sp.Error),
	})
}

func (sp *jobSpec) UnmarshalJSON(b []byte) error {
	v := specJSON{plainSpec: (*plainSpec)(sp)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	sp.Args, sp.ScriptName, sp.Cwd = recast[string](v.Args), string(v.ScriptName), string(v.Cwd)
	sp.Env, sp.Output, sp.Error = recast[string](v.Env), string(v.Output), string(v.Error)
	return nil
}
