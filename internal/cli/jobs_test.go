package cli

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// TestSubmitScriptDirectives checks that #SSI lines give defaults and the command line wins.
func TestSubmitScriptDirectives(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "job.sh")
	body := "#!/bin/sh\n#SSI --cpus 2 --name fromscript\n#SSI --env A=1 --array 1-4%2\n#SSI --time 10 --requeue\necho hi\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, o submitOptions)
		wantErr string
	}{
		{"directives only", []string{script, "x"}, func(t *testing.T, o submitOptions) {
			if o.cpus != "2" || o.name != "fromscript" || o.array != "1-4%2" || o.timeLimit != "10" || !slices.Equal(o.env, []string{"A=1"}) {
				t.Errorf("options %+v", o)
			}
		}, ""},
		{"command line wins", []string{"--cpus", "4", "--env", "B=2", script}, func(t *testing.T, o submitOptions) {
			if o.cpus != "4" || o.name != "fromscript" || !slices.Equal(o.env, []string{"B=2"}) {
				t.Errorf("options %+v", o)
			}
		}, ""},
		{"missing script", []string{filepath.Join(dir, "nope.sh")}, nil, "no script"},
		{"directory as script", []string{dir}, nil, "is a directory: give a script file"},
		{"command line --no-requeue wins over the script's --requeue", []string{"--no-requeue", script}, func(t *testing.T, o submitOptions) {
			if !o.noRequeue || o.requeue {
				t.Errorf("options %+v", o)
			}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newSubmitCommand(&Globals{})
			if err := cmd.Flags().Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			var o submitOptions
			// The command's own options struct is bound to its flags; read it back through them.
			o.cpus, _ = cmd.Flags().GetString("cpus")
			o.env, _ = cmd.Flags().GetStringArray("env")
			o.name, _ = cmd.Flags().GetString("name")
			req, err := buildSubmit(cmd, &o, cmd.Flags().Args(), false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
			if string(req.Script) != body || string(req.ScriptName) != script || req.CpusMilli == 0 || req.Array != "1-4%2" {
				t.Errorf("request %+v", req)
			}
		})
	}
}

func TestBuildSubmitRejectsBadOptions(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--cpus", "x", "--", "true"}, "cpu"},
		{[]string{"--time", "1:2:3:4", "--", "true"}, "time"},
		{[]string{"--array", "3-1", "--", "true"}, "array"},
		{[]string{"--mem", "lots", "--", "true"}, "size"},
		{[]string{"--env", "NOEQUALS", "--", "true"}, "is not k=v"},
		{[]string{"--requeue", "--no-requeue", "--", "true"}, "contradict"},
		{[]string{"--array", "", "--", "true"}, "--array is empty"},
		{[]string{"--output", "", "--", "true"}, "--output is empty"},
		{[]string{"--name", " ", "--", "true"}, "--name is empty"},
		{[]string{"--after", "", "--", "true"}, "--after has an empty job id"},
		{[]string{"--after-any", "4,", "--", "true"}, "--after-any has an empty job id"},
		{[]string{"--tasks", "0", "--", "true"}, "--tasks 0 asks for nothing"},
		{[]string{"--nodes", "0", "--", "true"}, "--nodes 0 asks for nothing"},
		{[]string{"--tasks", "100000", "--", "true"}, "--tasks 100000 is out of range: use 1 to"},
		{[]string{"--nodes", "-2", "--", "true"}, "--nodes -2 is out of range"},
		{[]string{"--output", "/", "--", "true"}, "--output / is a directory"},
		{[]string{"--error", "/tmp", "--", "true"}, "--error /tmp is a directory"},
	}
	for _, tt := range tests {
		cmd := newSubmitCommand(&Globals{})
		if err := cmd.Flags().Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		o := submitOptions{}
		o.cpus, _ = cmd.Flags().GetString("cpus")
		o.timeLimit, _ = cmd.Flags().GetString("time")
		o.array, _ = cmd.Flags().GetString("array")
		o.mem, _ = cmd.Flags().GetString("mem")
		o.env, _ = cmd.Flags().GetStringArray("env")
		o.requeue, _ = cmd.Flags().GetBool("requeue")
		o.noRequeue, _ = cmd.Flags().GetBool("no-requeue")
		o.nodes, _ = cmd.Flags().GetInt("nodes")
		o.tasks, _ = cmd.Flags().GetInt("tasks")
		o.output, _ = cmd.Flags().GetString("output")
		o.errPath, _ = cmd.Flags().GetString("error")
		_, err := buildSubmit(cmd, &o, cmd.Flags().Args(), true)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want a one-line error about %q", tt.args, err, tt.want)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		err  bool
	}{
		{"24h", now.Add(-24 * time.Hour), false},
		{"7d", now.AddDate(0, 0, -7), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"2026-03-01T00:00:00Z", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), false},
		{"yesterday", time.Time{}, true},
		{"-5h", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if (err != nil) != tt.err || (!tt.err && !got.Equal(tt.want)) {
			t.Errorf("parseSince(%q) = %v, %v; want %v (error %t)", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestEveryJobCommandHasExampleAndHelp(t *testing.T) {
	for _, c := range newJobsCommands(&Globals{}) {
		for _, sub := range append(c.Commands(), c) {
			if sub.Example == "" {
				t.Errorf("ssi %s has no example", sub.CommandPath())
			}
			if sub.Short == "" {
				t.Errorf("ssi %s has no short help", sub.CommandPath())
			}
			// Every command that does something takes -o json, except alloc, whose output
			// is the interactive session's.
			if sub.Runnable() && sub.Name() != "alloc" && sub.Flags().ShorthandLookup("o") == nil {
				t.Errorf("ssi %s has no -o", sub.CommandPath())
			}
		}
	}
}

func TestMissingArgumentsSayWhatToGive(t *testing.T) {
	// A root of its own: the real one registers these commands itself.
	root := &cobra.Command{Use: "ssi", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newJobsCommands(&Globals{})...)
	for _, args := range [][]string{{"cancel"}, {"hold"}, {"job", "show"}, {"node", "drain"}, {"submit"}} {
		root.SetArgs(args)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), "needs") || !strings.Contains(err.Error(), "--help") {
			t.Errorf("ssi %v: %v", args, err)
		}
	}
}

func TestQueueCreateRefusesEmptyNodes(t *testing.T) {
	for _, args := range [][]string{
		{"create", "q", "--nodes", ""},
		{"create", "q", "--nodes", "n1,"},
	} {
		cmd := newQueueCommand(&Globals{})
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), "--nodes has an empty node name") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

func TestListFiltersRefuseEmptyValues(t *testing.T) {
	tests := []struct {
		cmd  *cobra.Command
		args []string
		want string
	}{
		{newJobsListCommand(&Globals{}), []string{"-u", ""}, "--user is empty"},
		{newJobsListCommand(&Globals{}), []string{"--state", ""}, "--state is empty"},
		{newJobsListCommand(&Globals{}), []string{"--state", "pending,"}, "--state is empty"},
		{newHistoryCommand(&Globals{}), []string{"--user", " "}, "--user is empty"},
		{newHistoryCommand(&Globals{}), []string{"--since", ""}, "--since is empty"},
	}
	for _, tt := range tests {
		tt.cmd.SetArgs(tt.args)
		tt.cmd.SetOut(io.Discard)
		tt.cmd.SetErr(io.Discard)
		if err := tt.cmd.Execute(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s %v: %v, want %q", tt.cmd.Name(), tt.args, err, tt.want)
		}
	}
}

func TestShellWords(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"make", "-j4", "all"}, "make -j4 all"},
		{[]string{"sh", "-c", "echo $X; exit 3"}, `sh -c 'echo $X; exit 3'`},
		{[]string{"echo", "it's", ""}, `echo 'it'\''s' ''`},
		{[]string{"./job.sh", "a=1", "/tmp/x,y"}, "./job.sh a=1 /tmp/x,y"},
		{[]string{"cat", "caf\xe9 it's", "a\tb"}, `cat $'caf\xe9 it\'s' $'a\x09b'`},
		{[]string{"ls", "été"}, "ls 'été'"},
	}
	for _, tt := range tests {
		if got := shellWords(tt.in); got != tt.want {
			t.Errorf("shellWords(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestEscapedWordsReadBackInBash checks that what ssi job show prints for words that do not
// show as they are means the same bytes to bash.
func TestEscapedWordsReadBackInBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed to read the words back: %v", err)
	}
	for _, w := range []string{"\xff", "caf\xe9", "new\nline", `back\slash 'quote'`, "\x1b[31m", "ok \xc3\xa9 \xc3"} {
		out, err := exec.Command(bash, "-c", "printf %s "+escapedWord(w)).Output()
		if err != nil {
			t.Fatalf("bash on %s: %v", escapedWord(w), err)
		}
		if string(out) != w {
			t.Errorf("bash read %s back as %q, want %q", escapedWord(w), out, w)
		}
	}
}

func TestSubmitDashOIsTheFormat(t *testing.T) {
	cmd := newSubmitCommand(&Globals{})
	cmd.SetArgs([]string{"-o", "out.txt", "--", "true"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "the job's output file is --output FILE") {
		t.Fatalf("ssi submit -o out.txt: %v", err)
	}
}

func TestPrintShowHasTheTimes(t *testing.T) {
	submit := time.Date(2026, 3, 1, 10, 0, 0, 0, time.Local)
	tasks := []*jobspb.TaskInfo{
		{Id: "42_1", State: "completed", Nodes: []string{"n2"}, SubmitUnixMs: submit.UnixMilli(),
			StartUnixMs: submit.Add(2 * time.Second).UnixMilli(), EndUnixMs: submit.Add(5 * time.Second).UnixMilli(), HasExitCode: true},
		{Id: "42_2", State: "pending", SubmitUnixMs: submit.UnixMilli(), Reason: "held by user"},
	}
	tasks[0].Priority = -3
	var b strings.Builder
	s := showJSON{JobID: "42", Command: []string{"sh", "-c", "exit 0"}, Cwd: "/home/a", SubmitNode: "n1"}
	if err := printShow(&b, s, tasks); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"submitted:   2026-03-01 10:00:00",
		"START", "END",
		"2026-03-01 10:00:02  2026-03-01 10:00:05",
		"sh -c 'exit 0'",
		"queue , priority -3", // scontrol show job shows it too
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ssi job show lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "42_2  pending    -") {
		t.Errorf("a pending task's start should read -:\n%s", out)
	}
}

func TestInteractiveRefusesBatchOnlyOptions(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-i", "--array", "1-3", "--", "true"}, "cannot be an array"},
		{[]string{"-i", "--output", "out.txt", "--", "true"}, "drop --output/--error"},
		{[]string{"-i", "--error", "err.txt", "--", "true"}, "drop --output/--error"},
	} {
		cmd := newSubmitCommand(&Globals{socket: "/nonexistent/ssi.sock"})
		cmd.SetArgs(tt.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v; want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestInteractiveScriptArgs(t *testing.T) {
	tests := []struct {
		script string
		want   []string
	}{
		{"#!/bin/bash\necho hi\n", []string{"/bin/bash", "job.sh", "a"}},
		{"#! /usr/bin/env python3\nprint(1)\n", []string{"/usr/bin/env", "python3", "job.sh", "a"}},
		{"#!/usr/bin/env -S python3 -u\n", []string{"/usr/bin/env", "-S python3 -u", "job.sh", "a"}},
		{"#!/bin/sh\t-e\n", []string{"/bin/sh", "-e", "job.sh", "a"}},
		{"echo no interpreter\n", []string{"/bin/sh", "job.sh", "a"}},
		{"#!\necho empty\n", []string{"/bin/sh", "job.sh", "a"}},
	}
	for _, tt := range tests {
		got := ssipb.StringWords(interactiveScriptArgs([]byte(tt.script), []byte("job.sh"), [][]byte{[]byte("a")}))
		if !slices.Equal(got, tt.want) {
			t.Errorf("interactiveScriptArgs(%q) = %q, want %q", tt.script, got, tt.want)
		}
	}
}

func TestDirectivesRefuseFormat(t *testing.T) {
	for _, words := range [][]string{{"-o", "out-%j.txt"}, {"--format", "json"}, {"-ojson"}} {
		cmd := newSubmitCommand(&Globals{})
		if _, err := mergeDirectives(cmd.Flags(), words); err == nil || !strings.Contains(err.Error(), "write --output FILE") {
			t.Errorf("#SSI %q: %v, want a pointer to --output", words, err)
		}
	}
	if _, err := mergeDirectives(newSubmitCommand(&Globals{}).Flags(), []string{"--partition=debug"}); err == nil || !strings.Contains(err.Error(), "ssi's is --queue") {
		t.Errorf("#SSI --partition=debug: %v", err)
	}
	if _, err := mergeDirectives(newSubmitCommand(&Globals{}).Flags(), []string{"--tasks", "four"}); err == nil || err.Error() != `--tasks "four" is not a whole number` {
		t.Errorf("#SSI --tasks four: %v", err)
	}
	cmd := newSubmitCommand(&Globals{})
	if err := cmd.Flags().Parse([]string{"-o", "json"}); err != nil {
		t.Fatal(err)
	}
	d, err := mergeDirectives(cmd.Flags(), []string{"--output", "x.out"})
	if err != nil || d.format != formatJSON || d.output != "x.out" {
		t.Errorf("-o json on the command line with a script: %+v, %v", d, err)
	}
}

func TestTableCellsShowControlCharactersAsQuestionMarks(t *testing.T) {
	var b strings.Builder
	p := printer{w: &b, format: formatTable}
	if err := p.table([]string{"ID", "NAME"}, [][]string{{"4", "a\nb\tc"}, {"5", "\x1b[31mred"}, {"6", "caf\xe9 ok é"}}); err != nil {
		t.Fatal(err)
	}
	want := "ID  NAME\n4   a?b?c\n5   ?[31mred\n6   caf? ok é\n"
	if b.String() != want {
		t.Errorf("table:\n%q\nwant\n%q", b.String(), want)
	}
}

func TestSubmitReadsTheScriptFromStdin(t *testing.T) {
	body := "#!/bin/sh\n#SSI --name fromstdin --cpus 2\necho hi\n"
	cmd := newSubmitCommand(&Globals{})
	cmd.SetIn(strings.NewReader(body))
	if err := cmd.Args(cmd, nil); err != nil {
		t.Fatalf("ssi submit <<EOF refused: %v", err)
	}
	var o submitOptions
	req, err := buildSubmit(cmd, &o, []string{stdinScript}, false)
	if err != nil {
		t.Fatal(err)
	}
	if string(req.Script) != body || o.name != "fromstdin" || req.CpusMilli != 2000 {
		t.Errorf("request %+v, options %+v", req, o)
	}

	empty := newSubmitCommand(&Globals{})
	(&cobra.Command{Use: "ssi"}).AddCommand(empty) // the error names the command under its root
	empty.SetIn(strings.NewReader(""))
	if _, err := buildSubmit(empty, &submitOptions{}, []string{stdinScript}, false); err == nil || !strings.Contains(err.Error(), "needs a command after -- or a script") {
		t.Errorf("nothing on stdin: %v", err)
	}
	if err := runInteractive(t.Context(), &Globals{}, &jobspb.SubmitRequest{Script: []byte(body), ScriptName: []byte(stdinScript)}); err == nil || !strings.Contains(err.Error(), "cannot take its script on stdin") {
		t.Errorf("-i with the script on stdin: %v", err)
	}
}

func TestExpandIDs(t *testing.T) {
	got, err := expandIDs([]string{"41", "42_[1-3,7]", "43_5", "44_[0]", "x_[1]y"})
	want := []string{"41", "42_1", "42_2", "42_3", "42_7", "43_5", "44_0", "x_[1]y"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("expandIDs = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"42_[]", "42_[3-1]", "42_[1-3%2]", "42_[0-5000]"} {
		if _, err := expandIDs([]string{bad}); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("expandIDs(%q): %v, want a one-line error", bad, err)
		}
	}
}
