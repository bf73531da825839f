package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/ssi-cluster/ssi/internal/api/jobspb"
	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/sched"
)

// newJobsCommands returns the commands of the job system: submit, alloc, jobs, job, cancel,
// hold, release, history, queue and node.
func newJobsCommands(g *Globals) []*cobra.Command {
	return []*cobra.Command{
		newSubmitCommand(g),
		newAllocCommand(g),
		newJobsListCommand(g),
		newJobCommand(g),
		newCancelCommand(g),
		newHoldCommand(g, true),
		newHoldCommand(g, false),
		newHistoryCommand(g),
		newQueueCommand(g),
		newNodeCommand(g),
	}
}

// NeedArgs checks the number of arguments with an error that says what to give, unlike
// cobra's generic one. max < 0 means no upper bound.
func NeedArgs(min, max int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || (max >= 0 && len(args) > max) {
			return fmt.Errorf("%s needs %s: see ssi %s --help", cmd.CommandPath(), what, cmd.CommandPath()[len(cmd.Root().Name())+1:])
		}
		return nil
	}
}

// submitOptions are the options of ssi submit and ssi alloc, from the command line and from a
// script's #SSI lines.
type submitOptions struct {
	name, cpus, mem, timeLimit, queue, array, output, errPath string
	nodes, tasks                                              int
	priority                                                  int
	after, afterAny, env                                      []string
	requeue, noRequeue, hold, noKill, interactive             bool
	format                                                    string
}

// addSubmitFlags registers the job options on fs. alloc leaves out those that make no sense
// for an interactive session.
func addSubmitFlags(fs *pflag.FlagSet, o *submitOptions, batch bool) {
	fs.StringVarP(&o.name, "name", "J", "", "job name (default: the script's or command's name)")
	fs.StringVarP(&o.cpus, "cpus", "c", "", "cpus per task, e.g. 2 or 0.5 (default 1)")
	fs.StringVar(&o.mem, "mem", "", "memory per task, e.g. 512M or 4G; a bare number is megabytes (default: none reserved)")
	fs.IntVarP(&o.nodes, "nodes", "N", 0, "spread the tasks over this many nodes (default: pack them)")
	fs.IntVarP(&o.tasks, "tasks", "n", 0, "number of tasks, started together (default 1, or one per node with --nodes)")
	fs.StringVarP(&o.timeLimit, "time", "t", "", "time limit: minutes, MM:SS, HH:MM:SS, D-HH:MM:SS or 90s/2h (default: the queue's)")
	fs.StringVarP(&o.queue, "queue", "q", "", "queue to submit to (default batch; see ssi queue ls)")
	fs.IntVar(&o.priority, "priority", 0, "priority; higher runs first (only root may go above 0)")
	fs.StringSliceVar(&o.after, "after", nil, "start after these jobs completed successfully (ID[,ID])")
	fs.StringSliceVar(&o.afterAny, "after-any", nil, "start after these jobs ended, however they ended (ID[,ID])")
	fs.StringArrayVar(&o.env, "env", nil, "set an environment variable for the job, K=V (repeatable)")
	fs.BoolVar(&o.noKill, "no-kill", false, "keep the other tasks running when one fails")
	if !batch {
		return
	}
	fs.StringVarP(&o.array, "array", "a", "", "run an array of jobs: 1-100, 0-98:2, 1,3,7-9, with %N to run at most N at once")
	fs.StringVar(&o.output, "output", "", "stdout file; %j job id, %A array id, %a index, %x name, %u user, %n node, %t task (default ssi-%j.out)")
	fs.StringVarP(&o.errPath, "error", "e", "", "stderr file, same patterns (default: with stdout)")
	fs.BoolVar(&o.requeue, "requeue", false, "requeue the job if its node is lost (the default for batch jobs)")
	fs.BoolVar(&o.noRequeue, "no-requeue", false, "end the job as node_fail if its node is lost")
	fs.BoolVar(&o.hold, "hold", false, "submit held: it waits until ssi release")
	fs.BoolVarP(&o.interactive, "interactive", "i", false, "wait for the resources, then run the command attached to this terminal")
}

func newSubmitCommand(g *Globals) *cobra.Command {
	var o submitOptions
	cmd := &cobra.Command{
		Use:   "submit [options] -- CMD [ARGS...] | submit [options] SCRIPT [ARGS...]",
		Short: "Queue a job and print its id",
		Long: `Queue a batch job for the cluster's scheduler and print its id. The job runs as you, in
this directory, with this environment, on the node(s) the scheduler picks; its stdout and stderr
go to ssi-<id>.out here unless --output/--error say otherwise.

A SCRIPT may carry options on "#SSI" lines in its leading comment block, like #SBATCH lines;
options on the command line win over them. Without a SCRIPT or command, the script is read
from stdin when it is not a terminal, as sbatch does ("ssi submit <<EOF"). With -i the job is
interactive: ssi waits for the resources, runs the command attached to this terminal on the
first allocated node (as ssi run does), and the job ends with it.

The job gets SSI_JOB_ID, SSI_ARRAY_JOB_ID/SSI_ARRAY_TASK_ID (arrays), SSI_TASK_ID,
SSI_NTASKS, SSI_NODELIST and SSI_CHECKPOINT_DIR. A job that exits with 85 is requeued at once,
keeping SSI_CHECKPOINT_DIR (see docs/jobs.md).`,
		Example: `  ssi submit -- ./simulate --steps 1000
  ssi submit --cpus 4 --mem 8G --time 2:00:00 job.sh input.dat
  ssi submit --array 1-100%10 -- ./process-chunk       # uses $SSI_ARRAY_TASK_ID
  ID=$(ssi submit -- make all) && ssi submit --after $ID -- make test
  ssi submit --nodes 2 --tasks 8 -- ./mpi-like-solver
  ssi submit -i --cpus 2 -- python3`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && cmd.ArgsLenAtDash() < 0 && !stdinIsTerminal(cmd) {
				return nil // the script comes on stdin, as with sbatch
			}
			return needSubmitArgs(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.format != formatTable && o.format != formatJSON {
				// Slurm's -o is the output file; here -o is the format, as in every ssi command.
				return fmt.Errorf("unknown output format %q: use -o table or -o json (the job's output file is --output FILE)", o.format)
			}
			if len(args) == 0 {
				args = []string{stdinScript}
			}
			req, err := buildSubmit(cmd, &o, args, cmd.ArgsLenAtDash() >= 0)
			if err != nil {
				return err
			}
			if o.interactive {
				return runInteractive(cmd.Context(), g, req)
			}
			return submitBatch(cmd, g, req, o.format)
		},
	}
	addSubmitFlags(cmd.Flags(), &o, true)
	cmd.Flags().StringVarP(&o.format, "format", "o", formatTable, "output format: table (just the id) or json")
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// stdinScript is the script of "ssi submit" without arguments, whose stdin is not a terminal:
// sbatch reads its script from stdin then, as in "ssi submit <<EOF".
const stdinScript = "/dev/stdin"

// maxStdinScript bounds what is read from stdin: a script over the agent's limit (512 KiB) is
// refused anyway, and stdin may be an endless stream by mistake.
const maxStdinScript = 1 << 20

// stdinIsTerminal tells whether the command's stdin is a terminal (a reader set by a test
// is not).
func stdinIsTerminal(cmd *cobra.Command) bool {
	f, ok := cmd.InOrStdin().(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// needSubmitArgs is ssi submit's check for a command or a script.
func needSubmitArgs(cmd *cobra.Command, args []string) error {
	return NeedArgs(1, -1, "a command after -- or a script")(cmd, args)
}

func newAllocCommand(g *Globals) *cobra.Command {
	var o submitOptions
	cmd := &cobra.Command{
		Use:   "alloc [options] [-- CMD [ARGS...]]",
		Short: "Wait for resources, then run a shell (or CMD) in them",
		Long: `Queue an interactive job, wait until the scheduler grants it, then run CMD (default: your
shell) attached to this terminal on the first allocated node, with SSI_JOB_ID, SSI_NODELIST and
the other job variables set, so that "ssi run -n NODE" reaches the other nodes of the
allocation. The allocation ends when the command exits; Ctrl-C while waiting gives up.
Same as "ssi submit -i".`,
		Example: `  ssi alloc --cpus 4 --time 1:00:00
  ssi alloc --nodes 2 --tasks 2 -- bash -c 'for n in ${SSI_NODELIST//,/ }; do ssi run -n $n hostname; done'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				shell := os.Getenv("SHELL")
				if shell == "" {
					shell = "/bin/sh"
				}
				args = []string{shell}
			}
			o.interactive = true
			req, err := buildSubmit(cmd, &o, args, true)
			if err != nil {
				return err
			}
			return runInteractive(cmd.Context(), g, req)
		},
	}
	addSubmitFlags(cmd.Flags(), &o, false)
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// checkGiven refuses options that were given but say nothing: "--array=" or "--tasks 0"
// would otherwise fall back to the default silently, hiding the mistake (an unset shell
// variable, usually) behind a job that runs with options nobody asked for.
func checkGiven(fs *pflag.FlagSet) error {
	var err error
	fs.Visit(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		switch f.Name {
		case "name", "cpus", "mem", "time", "queue", "array", "output", "error":
			if strings.TrimSpace(f.Value.String()) == "" {
				err = fmt.Errorf("--%s is empty: give a value or leave the option out", f.Name)
			}
		case "after", "after-any":
			sv, ok := f.Value.(pflag.SliceValue)
			if ok && (len(sv.GetSlice()) == 0 || slices.Contains(sv.GetSlice(), "")) {
				err = fmt.Errorf("--%s has an empty job id: give ids like 42 or 42,43_7", f.Name)
			}
		case "nodes", "tasks":
			if f.Value.String() == "0" {
				err = fmt.Errorf("--%s 0 asks for nothing: give 1 or more, or leave the option out", f.Name)
			}
		}
	})
	return err
}

// refuseEmpty fails for a filter given with nothing in it ("-u $WHO" with WHO unset), which
// would otherwise list everything as if no filter had been asked for.
func refuseEmpty(fs *pflag.FlagSet, names ...string) error {
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		empty := strings.TrimSpace(f.Value.String()) == ""
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			empty = len(sv.GetSlice()) == 0 || slices.Contains(sv.GetSlice(), "")
		}
		if empty {
			return fmt.Errorf("--%s is empty: give a value or leave the option out", name)
		}
	}
	return nil
}

// buildSubmit turns the options and arguments into a submission. Without "--" the first
// argument is a script, whose #SSI lines give defaults for the options not on the command line.
func buildSubmit(cmd *cobra.Command, o *submitOptions, args []string, command bool) (*jobspb.SubmitRequest, error) {
	req := &jobspb.SubmitRequest{}
	if err := checkGiven(cmd.Flags()); err != nil {
		return nil, err
	}
	if !command {
		path := args[0]
		var script []byte
		var err error
		if path == stdinScript {
			script, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxStdinScript))
		} else {
			script, err = os.ReadFile(path)
		}
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no script %s: give a script file, or put the command after --, as in ssi submit -- %s", path, strings.Join(args, " "))
			}
			if errors.Is(err, syscall.EISDIR) {
				return nil, fmt.Errorf("script %s is a directory: give a script file, or put the command after --", path)
			}
			return nil, fmt.Errorf("reading the script %s: %w (give a script you can read, or put the command after --)", path, err)
		}
		if len(script) == 0 && path == stdinScript {
			return nil, needSubmitArgs(cmd, nil) // nothing on stdin: probably no script meant at all
		}
		words, err := sched.ParseScriptDirectives(script)
		if err != nil {
			return nil, fmt.Errorf("script %s: %w", path, err)
		}
		if len(words) > 0 {
			merged, err := mergeDirectives(cmd.Flags(), words)
			if err != nil {
				return nil, fmt.Errorf("script %s, #SSI line: %w", path, err)
			}
			*o = *merged
		}
		req.Script, req.ScriptName, req.Args = script, []byte(path), ssipb.ByteWords(args[1:])
	} else {
		req.Args = ssipb.ByteWords(args)
	}
	for _, f := range []struct{ flag, v string }{{"name", o.name}, {"queue", o.queue}} {
		if !utf8.ValidString(f.v) {
			return nil, fmt.Errorf("--%s %q is not valid UTF-8: give it in UTF-8", f.flag, f.v)
		}
	}
	if o.requeue && o.noRequeue {
		return nil, errors.New("--requeue and --no-requeue contradict each other: give one")
	}
	switch {
	case o.requeue:
		req.Requeue = jobspb.SubmitRequest_REQUEUE_YES
	case o.noRequeue:
		req.Requeue = jobspb.SubmitRequest_REQUEUE_NO
	}
	if o.cpus != "" {
		v, err := sched.ParseCPUs(o.cpus)
		if err != nil {
			return nil, err
		}
		req.CpusMilli = v
	}
	if o.mem != "" {
		v, err := sched.ParseMem(o.mem)
		if err != nil {
			return nil, err
		}
		req.MemBytes = v
	}
	if o.timeLimit != "" {
		d, err := sched.ParseTimeLimit(o.timeLimit)
		if err != nil {
			return nil, err
		}
		req.TimeLimitSeconds = int64(d / time.Second)
	}
	if o.array != "" {
		spec, err := sched.ParseArray(o.array)
		if err != nil {
			return nil, err
		}
		req.Array = spec.String()
	}
	for _, n := range []struct {
		flag string
		v    int
	}{{"nodes", o.nodes}, {"tasks", o.tasks}} {
		if n.v < 0 || n.v > sched.MaxTasks {
			return nil, fmt.Errorf("--%s %d is out of range: use 1 to %d", n.flag, n.v, sched.MaxTasks)
		}
	}
	if o.priority < math.MinInt32 || o.priority > math.MaxInt32 {
		return nil, fmt.Errorf("--priority %d is out of range", o.priority)
	}
	for _, kv := range o.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("--env %q is not K=V: write it like --env OMP_NUM_THREADS=4", kv)
		}
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("finding the working directory: %w (submit from an existing directory)", err)
	}
	if err := refuseDirectoryOutput(cwd, o.output, o.errPath); err != nil {
		return nil, err
	}
	req.Name, req.Cwd, req.Env = o.name, []byte(cwd), ssipb.ByteWords(append(os.Environ(), o.env...))
	req.Nodes, req.Tasks, req.Queue, req.Priority = uint32(o.nodes), uint32(o.tasks), o.queue, int32(o.priority)
	req.After, req.AfterAny, req.Output, req.Error = o.after, o.afterAny, []byte(o.output), []byte(o.errPath)
	req.Hold, req.NoKill = o.hold, o.noKill
	return req, nil
}

// withSlurmHint adds ssi's way to an unknown-option error for a Slurm option that Slurm users
// type by habit (on the command line, or in #SSI lines converted from #SBATCH): "unknown
// flag: --partition" alone leaves them to search the help for --queue.
func withSlurmHint(err error) error {
	var unknown *pflag.NotExistError
	if !errors.As(err, &unknown) {
		return err
	}
	var ours string
	switch unknown.GetSpecifiedName() {
	case "p", "partition":
		ours = "--queue (-q)"
	case "d", "dependency":
		ours = "--after ID for afterok, --after-any ID for afterany"
	case "job-name":
		ours = "--name (-J)"
	case "ntasks":
		ours = "--tasks (-n)"
	case "cpus-per-task":
		ours = "--cpus (-c)"
	case "mem-per-cpu":
		ours = "--mem, which is per task"
	case "wrap":
		ours = "the command after --: ssi submit [options] -- CMD [ARGS...]"
	case "export":
		ours = "--env K=V; the job gets your environment as it is"
	default:
		return err
	}
	return fmt.Errorf("%w (Slurm's option: ssi's is %s)", err, ours)
}

// refuseDirectoryOutput refuses an --output or --error that names an existing directory
// here: the job could not open it, and on a node without that directory it would quietly
// become a file of that name. Names with patterns are left to the job (they are known only
// when it runs); the agent refuses names that end in "/" whatever exists.
func refuseDirectoryOutput(cwd string, paths ...string) error {
	for i, p := range paths {
		if p == "" || strings.Contains(p, "%") {
			continue
		}
		full := p
		if !filepath.IsAbs(full) {
			full = filepath.Join(cwd, p)
		}
		if fi, err := os.Stat(full); err == nil && fi.IsDir() {
			flag := []string{"--output", "--error"}[i]
			return fmt.Errorf("%s %s is a directory: name a file in it, such as %s", flag, p, filepath.Join(p, "ssi-%j.out"))
		}
	}
	return nil
}

// mergeDirectives parses a script's #SSI words with the same flags, then lays the options
// given on the command line over them.
func mergeDirectives(cmdline *pflag.FlagSet, words []string) (*submitOptions, error) {
	var d submitOptions
	fs := pflag.NewFlagSet("#SSI", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addSubmitFlags(fs, &d, true)
	fs.StringVarP(&d.format, "format", "o", formatTable, "")
	if err := fs.Parse(words); err != nil {
		return nil, withSlurmHint(flagValueError(err))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected %q: #SSI lines hold options only", fs.Arg(0))
	}
	if fs.Changed("format") {
		// A script converted from #SBATCH keeps "-o FILE", sbatch's output file: here -o is how
		// ssi submit prints, which a script has no business choosing.
		return nil, fmt.Errorf("-o %s: -o sets how ssi submit prints, not the job's output file: write --output FILE", d.format)
	}
	if err := checkGiven(fs); err != nil {
		return nil, err
	}
	// The command line wins over the script, also for the requeue pair: "--requeue" on the
	// command line undoes a script's "--no-requeue" instead of contradicting it.
	if f := cmdline.Lookup("requeue"); f != nil && f.Changed {
		d.noRequeue = false
	}
	if f := cmdline.Lookup("no-requeue"); f != nil && f.Changed {
		d.requeue = false
	}
	var err error
	cmdline.Visit(func(f *pflag.Flag) {
		target := fs.Lookup(f.Name)
		if target == nil || err != nil {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = target.Value.(pflag.SliceValue).Replace(sv.GetSlice())
			return
		}
		err = target.Value.Set(f.Value.String())
	})
	return &d, err
}

func submitBatch(cmd *cobra.Command, g *Globals, req *jobspb.SubmitRequest, format string) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	client := g.jobs()
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	resp, err := client.Submit(ctx, req)
	if err != nil {
		return g.rpcError(err)
	}
	p := printer{w: cmd.OutOrStdout(), format: format}
	if format == formatJSON {
		return p.json(map[string]any{"job_id": resp.JobId, "tasks": resp.Tasks})
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.JobId)
	return err
}

// interactiveScriptArgs is the command that runs a script in an interactive job: its "#!"
// interpreter (or /bin/sh without one, as a batch job's) with the script's path, as the
// kernel would run it. The script itself is not executed: a batch script need not be
// executable, nor be found in PATH when named without a directory ("ssi submit -i job.sh").
// As the kernel does, the rest of the "#!" line is one argument after the interpreter.
func interactiveScriptArgs(script, path []byte, args [][]byte) [][]byte {
	interp := [][]byte{[]byte("/bin/sh")}
	if rest, ok := bytes.CutPrefix(script, []byte("#!")); ok {
		line, _, _ := bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimLeft(line, " \t")
		prog, arg := line, []byte(nil)
		if i := bytes.IndexAny(line, " \t"); i >= 0 {
			prog, arg = line[:i], line[i+1:]
		}
		if len(prog) > 0 {
			interp = [][]byte{prog}
			if arg = bytes.Trim(arg, " \t"); len(arg) > 0 {
				interp = append(interp, arg)
			}
		}
	}
	return slices.Concat(interp, [][]byte{path}, args)
}

// runInteractive queues an interactive job, waits for it, runs the command in the allocation
// through the process space (ssi run's launcher) and reports its exit status to the job.
func runInteractive(ctx context.Context, g *Globals, req *jobspb.SubmitRequest) error {
	if req.Array != "" {
		return errors.New("an interactive job cannot be an array: drop --array or -i")
	}
	if len(req.Output) > 0 || len(req.Error) > 0 {
		return errors.New("an interactive job writes to this terminal, not to files: drop --output/--error, or -i to queue a batch job")
	}
	if string(req.ScriptName) == stdinScript {
		return errors.New("an interactive job cannot take its script on stdin, which is its terminal: give the script's file")
	}
	if len(req.Script) > 0 {
		if err := sched.CheckScript(req.Script); err != nil {
			return fmt.Errorf("script %s %w", req.ScriptName, err)
		}
		if req.Name == "" {
			req.Name = filepath.Base(string(req.ScriptName))
		}
		req.Args = interactiveScriptArgs(req.Script, req.ScriptName, req.Args)
		req.Script = nil
	}
	argv := ssipb.StringWords(req.Args)
	client := g.jobs()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Interactive(ctx)
	if err != nil {
		return g.rpcError(err)
	}
	defer stream.Close()
	if err := stream.Send(&jobspb.InteractiveInput{Msg: &jobspb.InteractiveInput_Submit{Submit: req}}); err != nil {
		return g.rpcError(err)
	}
	// Until the session runs, Ctrl-C gives up the job; afterwards ssi run forwards signals.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	msgs := make(chan *jobspb.InteractiveOutput, 8)
	recvErr := make(chan error, 1)
	go func() {
		for {
			out, err := stream.Recv()
			if err != nil {
				recvErr <- err
				close(msgs)
				return
			}
			msgs <- out
		}
	}()
	var id string
	for {
		select {
		case sig := <-sigs:
			cancel()
			fmt.Fprintf(os.Stderr, "ssi: gave up job %s\n", id)
			return exitError{code: 128 + int(sig.(syscall.Signal))}
		case out, ok := <-msgs:
			if !ok {
				return g.rpcError(<-recvErr)
			}
			switch m := out.Msg.(type) {
			case *jobspb.InteractiveOutput_Queued:
				id = m.Queued
				fmt.Fprintf(os.Stderr, "ssi: job %s queued\n", id)
			case *jobspb.InteractiveOutput_Waiting:
				fmt.Fprintf(os.Stderr, "ssi: job %s waiting: %s\n", id, m.Waiting)
			case *jobspb.InteractiveOutput_Final:
				return exitError{code: 1, msg: fmt.Sprintf("job %s ended (%s) before it started", id, m.Final.State)}
			case *jobspb.InteractiveOutput_Granted:
				fmt.Fprintf(os.Stderr, "ssi: job %s running on %s\n", id, strings.Join(m.Granted.Nodes, ","))
				return runGranted(ctx, g, stream, msgs, sigs, m.Granted, argv)
			}
		}
	}
}

type interactiveStream interface {
	Send(*jobspb.InteractiveInput) error
}

// runGranted runs the session on the allocation and reports its end.
func runGranted(ctx context.Context, g *Globals, stream interactiveStream, msgs <-chan *jobspb.InteractiveOutput,
	sigs <-chan os.Signal, grant *jobspb.Granted, argv []string) error {
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan error, 1)
	go func() {
		done <- runRemote(runCtx, g, runOptions{node: grant.Nodes[0], env: grant.Env}, argv)
	}()
	var runErr error
	var final *jobspb.Final
	var killAfter <-chan time.Time
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-sigs:
			// ssi run forwards these to the session.
		case <-killAfter:
			stopRun()
		case out, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			switch m := out.Msg.(type) {
			case *jobspb.InteractiveOutput_Signal:
				// Raising it here makes ssi run forward it to the session.
				_ = syscall.Kill(os.Getpid(), syscall.Signal(m.Signal))
			case *jobspb.InteractiveOutput_Revoke:
				fmt.Fprintf(os.Stderr, "\nssi: job %s is ending: %s\n", grant.JobId, m.Revoke.Reason)
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
				killAfter = time.After(time.Duration(m.Revoke.GraceMs) * time.Millisecond)
			case *jobspb.InteractiveOutput_Final:
				final = m.Final
				stopRun()
			}
		}
	}
	code, msg := 255, ""
	var ee exitError
	switch {
	case errors.As(runErr, &ee):
		code, msg = ee.code, ee.msg
	case runErr == nil:
		code = 0
	default:
		msg = runErr.Error()
	}
	if final == nil {
		_ = stream.Send(&jobspb.InteractiveInput{Msg: &jobspb.InteractiveInput_Exit{Exit: int32(code)}})
		timeout := time.After(5 * time.Second)
	collect:
		for msgs != nil {
			select {
			case out, ok := <-msgs:
				if !ok {
					break collect
				}
				if f := out.GetFinal(); f != nil {
					final = f
					break collect
				}
			case <-timeout:
				break collect
			}
		}
	}
	if final != nil && final.State != string(sched.StateCompleted) && final.State != string(sched.StateFailed) && msg == "" {
		msg = fmt.Sprintf("job %s ended as %s", grant.JobId, final.State)
	}
	return exitError{code: code, msg: msg}
}

// taskJSON is the stable JSON shape of a job task for scripts.
type taskJSON struct {
	ID             string   `json:"id"`
	JobID          string   `json:"job_id"`
	ArrayIndex     *int32   `json:"array_index"`
	Name           string   `json:"name"`
	User           string   `json:"user"`
	UID            uint32   `json:"uid"`
	State          string   `json:"state"`
	Reason         string   `json:"reason"`
	NeverRunnable  bool     `json:"never_runnable,omitempty"`
	Queue          string   `json:"queue"`
	Nodes          []string `json:"nodes"`
	SubmitTime     *string  `json:"submit_time"`
	StartTime      *string  `json:"start_time"`
	EndTime        *string  `json:"end_time"`
	ExitCode       *int32   `json:"exit_code"`
	CPUs           float64  `json:"cpus"`
	MemBytes       int64    `json:"mem_bytes"`
	Tasks          uint32   `json:"tasks"`
	TimeLimit      int64    `json:"time_limit_seconds"`
	Priority       int32    `json:"priority"`
	Attempts       uint32   `json:"attempts"`
	CPUTimeSeconds float64  `json:"cpu_time_seconds"`
	MaxRSSBytes    uint64   `json:"max_rss_bytes"`
	Interactive    bool     `json:"interactive,omitempty"`
}

func jsonTime(ms int64) *string {
	if ms == 0 {
		return nil
	}
	s := time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
	return &s
}

func toTaskJSON(t *jobspb.TaskInfo) taskJSON {
	out := taskJSON{
		ID: t.Id, JobID: t.JobId, Name: t.Name, User: t.User, UID: t.Uid, State: t.State, Reason: t.Reason,
		NeverRunnable: t.NeverRunnable, Queue: t.Queue, Nodes: t.Nodes, SubmitTime: jsonTime(t.SubmitUnixMs),
		StartTime: jsonTime(t.StartUnixMs), EndTime: jsonTime(t.EndUnixMs), CPUs: float64(t.CpusMilli) / 1000,
		MemBytes: t.MemBytes, Tasks: t.Tasks, TimeLimit: t.TimeLimitSeconds, Priority: t.Priority, Attempts: t.Attempts,
		CPUTimeSeconds: float64(t.CpuTimeMs) / 1000, MaxRSSBytes: t.MaxRssBytes, Interactive: t.Interactive,
	}
	if out.Nodes == nil {
		out.Nodes = []string{}
	}
	if t.ArrayIndex >= 0 {
		idx := t.ArrayIndex
		out.ArrayIndex = &idx
	}
	if t.HasExitCode {
		code := t.ExitCode
		out.ExitCode = &code
	}
	return out
}

func tasksJSON(ts []*jobspb.TaskInfo) []taskJSON {
	out := make([]taskJSON, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTaskJSON(t))
	}
	return out
}

// elapsed is how long a task ran (or runs, as of now).
func elapsed(t *jobspb.TaskInfo, now time.Time) string {
	if t.StartUnixMs == 0 {
		return "-"
	}
	end := now
	if t.EndUnixMs != 0 {
		end = time.UnixMilli(t.EndUnixMs)
	}
	return sched.FormatTimeLimit(end.Sub(time.UnixMilli(t.StartUnixMs)))
}

func nodesCell(nodes []string) string {
	if len(nodes) == 0 {
		return "-"
	}
	return strings.Join(nodes, ",")
}

func newJobsListCommand(g *Globals) *cobra.Command {
	var (
		all    bool
		user   string
		states []string
		format string
	)
	cmd := &cobra.Command{
		Use:   "jobs [-a] [-u USER] [--state S] [ID...]",
		Short: "List pending and running jobs, one line per task",
		Long: `List the cluster's pending and running jobs, everyone's (as squeue does), one line per array
element. A pending job always says why it waits. With -a, jobs that ended in the last day are
listed too. States: pending, running, completed, failed, cancelled, timeout, node_fail.`,
		Example: `  ssi jobs
  ssi jobs -u alice --state pending
  ssi jobs -a -o json | jq '.[] | select(.state == "failed") | .id'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if err := refuseEmpty(cmd.Flags(), "user", "state"); err != nil {
				return err
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := client.List(ctx, &jobspb.ListRequest{All: all, User: user, States: states, Ids: args})
			if err != nil {
				return g.rpcError(err)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				return p.json(tasksJSON(resp.Tasks))
			}
			now := time.Now()
			rows := make([][]string, 0, len(resp.Tasks))
			for _, t := range resp.Tasks {
				note := t.Reason
				if t.HasExitCode && t.State != "pending" {
					note = "exit " + strconv.Itoa(int(t.ExitCode))
					if t.Reason != "" {
						note += ": " + t.Reason
					}
				}
				rows = append(rows, []string{t.Id, t.Name, t.User, t.State, t.Queue, elapsed(t, now), nodesCell(t.Nodes), note})
			}
			return p.table([]string{"ID", "NAME", "USER", "STATE", "QUEUE", "TIME", "NODES", "REASON"}, rows)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&all, "all", "a", false, "include jobs that ended in the last day")
	f.StringVarP(&user, "user", "u", "", "only this user's jobs (name or uid)")
	f.StringSliceVar(&states, "state", nil, "only jobs in these states (S[,S]; squeue's PD, R, CD, F, CA, TO, NF too)")
	outputFlag(cmd, &format)
	return cmd
}

// showJSON is the JSON shape of ssi job show.
type showJSON struct {
	JobID      string        `json:"job_id"`
	Command    []string      `json:"command"`
	Script     bool          `json:"script"`
	Cwd        string        `json:"cwd"`
	Output     string        `json:"output"`
	Error      string        `json:"error,omitempty"`
	Array      string        `json:"array,omitempty"`
	After      []string      `json:"after,omitempty"`
	AfterAny   []string      `json:"after_any,omitempty"`
	Requeue    bool          `json:"requeue"`
	Hold       bool          `json:"hold"`
	NoKill     bool          `json:"no_kill"`
	Nodes      uint32        `json:"nodes"`
	SubmitNode string        `json:"submit_node"`
	Tasks      []taskJSON    `json:"tasks"`
	Attempts   []attemptJSON `json:"attempts"`
	Events     []string      `json:"events"`
}

type attemptJSON struct {
	Number    uint32   `json:"number"`
	State     string   `json:"state"`
	Reason    string   `json:"reason"`
	Nodes     []string `json:"nodes"`
	StartTime *string  `json:"start_time"`
	EndTime   *string  `json:"end_time"`
	ExitCode  *int32   `json:"exit_code"`
}

func newJobCommand(g *Globals) *cobra.Command {
	job := &cobra.Command{
		Use:   "job",
		Short: "Inspect one job",
		Example: `  ssi job show 42
  ssi job show 42_7 -o json`,
	}
	var format string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a job in full: command, options, every task, earlier runs and changes",
		Example: `  ssi job show 42
  ssi job show 42_7 -o json | jq .tasks[0].state`,
		Args: NeedArgs(1, 1, "one job id (see ssi jobs)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			r, err := client.Show(ctx, &jobspb.ShowRequest{Id: args[0]})
			if err != nil {
				return g.rpcError(err)
			}
			out := showJSON{
				JobID: r.JobId, Command: ssipb.StringWords(r.Command), Script: r.Script, Cwd: string(r.Cwd), Output: string(r.Output), Error: string(r.Error),
				Array: r.Array, After: r.After, AfterAny: r.AfterAny, Requeue: r.Requeue, Hold: r.Hold, NoKill: r.NoKill,
				Nodes: r.Nodes, SubmitNode: r.SubmitNode, Tasks: tasksJSON(r.Tasks), Attempts: []attemptJSON{}, Events: r.Events,
			}
			if out.Events == nil {
				out.Events = []string{}
			}
			for _, a := range r.Attempts {
				aj := attemptJSON{Number: a.Number, State: a.State, Reason: a.Reason, Nodes: a.Nodes,
					StartTime: jsonTime(a.StartUnixMs), EndTime: jsonTime(a.EndUnixMs)}
				if a.HasExitCode {
					code := a.ExitCode
					aj.ExitCode = &code
				}
				out.Attempts = append(out.Attempts, aj)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				return p.json(out)
			}
			return printShow(cmd.OutOrStdout(), out, r.Tasks)
		},
	}
	outputFlag(show, &format)
	job.AddCommand(show)
	return job
}

// shellWords joins a command line so that it reads as it was typed: words that a shell
// would split or expand are single-quoted ("sh -c 'echo $X'", not "sh -c echo $X").
func shellWords(words []string) string {
	out := make([]string, len(words))
	for i, w := range words {
		plain := w != ""
		for _, c := range w {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./=:,+@%", c)) {
				plain = false
				break
			}
		}
		switch {
		case plain:
			out[i] = w
		case !printable(w):
			out[i] = escapedWord(w)
		default:
			out[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// printable tells whether s shows on a terminal as it is: valid UTF-8 without control characters.
func printable(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, func(c rune) bool { return !unicode.IsPrint(c) }) < 0
}

// escapedWord writes a word that does not show as it is (bytes that are not UTF-8, control
// characters) the way bash's printf %q does, $'...' with \xHH escapes, so that it can be
// pasted back into a shell and means the same bytes.
func escapedWord(w string) string {
	var b strings.Builder
	b.WriteString("$'")
	for len(w) > 0 {
		c, size := utf8.DecodeRuneInString(w)
		switch {
		case c == utf8.RuneError && size <= 1, !unicode.IsPrint(c):
			for _, x := range []byte(w[:size]) {
				fmt.Fprintf(&b, "\\x%02x", x)
			}
		case c == '\'' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		default:
			b.WriteString(w[:size])
		}
		w = w[size:]
	}
	b.WriteByte('\'')
	return b.String()
}

// shownPath is a path as ssi job show prints it: as it is, unless it would not show as it is.
func shownPath(p string) string {
	if printable(p) {
		return p
	}
	return escapedWord(p)
}

// showTime is a moment of a job in ssi job show: local time to the second, "-" if not yet.
func showTime(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).Format("2006-01-02 15:04:05")
}

func printShow(w io.Writer, s showJSON, tasks []*jobspb.TaskInfo) error {
	kind := "command"
	if s.Script {
		kind = "script"
	}
	fmt.Fprintf(w, "Job %s\n", s.JobID)
	fmt.Fprintf(w, "  %-12s %s\n", kind+":", shellWords(s.Command))
	fmt.Fprintf(w, "  %-12s %s (submitted on %s)\n", "directory:", shownPath(s.Cwd), s.SubmitNode)
	if len(tasks) > 0 {
		fmt.Fprintf(w, "  %-12s %s\n", "submitted:", showTime(tasks[0].SubmitUnixMs))
	}
	out := shownPath(s.Output)
	if s.Error != "" {
		out += ", errors to " + shownPath(s.Error)
	}
	fmt.Fprintf(w, "  %-12s %s\n", "output:", out)
	if s.Array != "" {
		fmt.Fprintf(w, "  %-12s %s\n", "array:", s.Array)
	}
	if len(s.After)+len(s.AfterAny) > 0 {
		fmt.Fprintf(w, "  %-12s after %v, after-any %v\n", "depends:", s.After, s.AfterAny)
	}
	fmt.Fprintf(w, "  %-12s requeue %t, hold %t, no-kill %t\n", "options:", s.Requeue, s.Hold, s.NoKill)
	if len(tasks) > 0 {
		t := tasks[0]
		fmt.Fprintf(w, "  %-12s %s, %s cpus and %s per task, %d task(s), limit %s, queue %s, priority %d\n", "resources:",
			t.User, sched.FormatCPUs(t.CpusMilli), humanBytes(uint64(t.MemBytes)), t.Tasks,
			sched.FormatTimeLimit(time.Duration(t.TimeLimitSeconds)*time.Second), t.Queue, t.Priority)
	}
	fmt.Fprintln(w)
	p := printer{w: w, format: formatTable}
	now := time.Now()
	rows := make([][]string, 0, len(tasks))
	for _, t := range tasks {
		exit := "-"
		if t.HasExitCode {
			exit = strconv.Itoa(int(t.ExitCode))
		}
		cpu := "-"
		if t.EndUnixMs != 0 && t.StartUnixMs != 0 {
			cpu = sched.FormatTimeLimit(time.Duration(t.CpuTimeMs) * time.Millisecond)
		}
		rows = append(rows, []string{t.Id, t.State, nodesCell(t.Nodes), showTime(t.StartUnixMs), showTime(t.EndUnixMs),
			elapsed(t, now), exit, cpu, peakCell(t.MaxRssBytes), t.Reason})
	}
	if err := p.table([]string{"TASK", "STATE", "NODES", "START", "END", "TIME", "EXIT", "CPU", "MAXRSS", "REASON"}, rows); err != nil {
		return err
	}
	if len(s.Attempts) > 0 {
		fmt.Fprintln(w, "\nEarlier runs (requeued):")
		for _, a := range s.Attempts {
			fmt.Fprintf(w, "  #%d %s on %s: %s\n", a.Number, a.State, strings.Join(a.Nodes, ","), a.Reason)
		}
	}
	if len(s.Events) > 0 {
		fmt.Fprintln(w, "\nChanges:")
		for _, e := range s.Events {
			fmt.Fprintln(w, "  "+e)
		}
	}
	return nil
}

// controlJSON is one job's outcome of cancel, hold or release.
type controlJSON struct {
	ID    string `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// reportControl prints the per-job errors of cancel, hold or release (or all outcomes as
// JSON), and fails if any job failed.
func reportControl(cmd *cobra.Command, verb, format string, resp *jobspb.ControlResponse) error {
	if format == formatJSON {
		out := make([]controlJSON, 0, len(resp.Results))
		failed := false
		for _, r := range resp.Results {
			out = append(out, controlJSON{ID: r.Id, OK: r.Error == "", Error: r.Error})
			failed = failed || r.Error != ""
		}
		if err := (printer{w: cmd.OutOrStdout(), format: format}).json(out); err != nil {
			return err
		}
		if failed {
			return exitError{code: 1}
		}
		return nil
	}
	failed := 0
	for _, r := range resp.Results {
		if r.Error != "" {
			fmt.Fprintf(os.Stderr, "ssi %s: %s\n", verb, r.Error)
			failed++
		}
	}
	if failed > 0 {
		return exitError{code: 1}
	}
	return nil
}

func newCancelCommand(g *Globals) *cobra.Command {
	var sig, format string
	cmd := &cobra.Command{
		Use:   "cancel ID... [-s SIG]",
		Short: "Cancel jobs, or send them a signal",
		Long: `Cancel jobs or array elements (42 or 42_7). A pending job ends at once; a running one gets
TERM, then KILL after a grace period, and ends as cancelled. With -s, the running tasks get that
signal and keep running. You may cancel only your own jobs; root may cancel any.`,
		Example: `  ssi cancel 42
  ssi cancel 42_7 43
  ssi cancel 42_[1-5,9]       # elements 1 to 5 and 9, as scancel takes them
  ssi cancel -s USR1 42       # e.g. ask the job to checkpoint`,
		Args: NeedArgs(1, -1, "the ids of the jobs to cancel (see ssi jobs)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			ids, err := expandIDs(args)
			if err != nil {
				return err
			}
			req := &jobspb.ControlRequest{Ids: ids}
			if sig != "" {
				// Signal 0 would deliver nothing, so a job has no use for it.
				s, err := parseSignalFrom(sig, 1, "ssi cancel -s")
				if err != nil {
					return err
				}
				req.Signal = int32(s)
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := client.Cancel(ctx, req)
			if err != nil {
				return g.rpcError(err)
			}
			return reportControl(cmd, "cancel", format, resp)
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "", "send this signal (name or number) instead of cancelling")
	outputFlag(cmd, &format)
	return cmd
}

// maxExpandedIDs bounds the elements one "42_[...]" may name: each is changed on its own, and
// the whole array is one id.
const maxExpandedIDs = 1000

// expandIDs turns Slurm's element ranges ("42_[1-3,7]", as scancel and scontrol take them)
// into element ids; other words are passed on as they are, for the agent to judge.
func expandIDs(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		base, list, ok := strings.Cut(a, "_[")
		if !ok || !strings.HasSuffix(list, "]") {
			out = append(out, a)
			continue
		}
		list = strings.TrimSuffix(list, "]")
		spec, err := sched.ParseArray(list)
		if err != nil || spec.MaxRunning > 0 {
			return nil, fmt.Errorf("%s: the elements in [] are not a list like 1-3,7: see ssi jobs for the ids", a)
		}
		if spec.Len() > maxExpandedIDs {
			return nil, fmt.Errorf("%s names more than %d elements: give the array's id, %s, to act on all of it", a, maxExpandedIDs, base)
		}
		for _, i := range spec.Indices() {
			out = append(out, base+"_"+strconv.Itoa(i))
		}
	}
	return out, nil
}

func newHoldCommand(g *Globals, hold bool) *cobra.Command {
	use, short, example := "hold", "Keep pending jobs from starting", "  ssi hold 42\n  ssi hold 42_3 42_4"
	if !hold {
		use, short, example = "release", "Let held jobs start", "  ssi release 42\n  ssi release 42_3"
	}
	var format string
	cmd := &cobra.Command{
		Use:     use + " ID...",
		Short:   short,
		Long:    short + ". You may " + use + " only your own jobs; root may " + use + " any.",
		Example: example,
		Args:    NeedArgs(1, -1, "the ids of the jobs to "+use+" (see ssi jobs)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			ids, err := expandIDs(args)
			if err != nil {
				return err
			}
			call := client.Hold
			if !hold {
				call = client.Release
			}
			resp, err := call(ctx, &jobspb.ControlRequest{Ids: ids})
			if err != nil {
				return g.rpcError(err)
			}
			return reportControl(cmd, use, format, resp)
		},
	}
	outputFlag(cmd, &format)
	return cmd
}

func newHistoryCommand(g *Globals) *cobra.Command {
	var (
		user, since, format string
		limit               uint32
	)
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List finished jobs with their node, exit code, times, CPU time and peak memory",
		Long: `List finished jobs, newest first, from the cluster's accounting records (kept in etcd, so
they survive restarts): node, exit code, start and end, elapsed and CPU time, and peak memory.`,
		Example: `  ssi history
  ssi history -u alice --since 24h -n 50
  ssi history -o json | jq '[.[] | .cpu_time_seconds] | add'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if err := refuseEmpty(cmd.Flags(), "user", "since"); err != nil {
				return err
			}
			req := &jobspb.HistoryRequest{User: user, Limit: limit}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.SinceUnixMs = t.UnixMilli()
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := client.History(ctx, req)
			if err != nil {
				return g.rpcError(err)
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				return p.json(tasksJSON(resp.Tasks))
			}
			now := time.Now()
			rows := make([][]string, 0, len(resp.Tasks))
			for _, t := range resp.Tasks {
				exit := "-"
				if t.HasExitCode {
					exit = strconv.Itoa(int(t.ExitCode))
				}
				start, end := "-", "-"
				if t.StartUnixMs != 0 {
					start = time.UnixMilli(t.StartUnixMs).Format("2006-01-02 15:04:05")
				}
				if t.EndUnixMs != 0 {
					end = time.UnixMilli(t.EndUnixMs).Format("2006-01-02 15:04:05")
				}
				rows = append(rows, []string{t.Id, t.Name, t.User, t.State, exit, nodesCell(t.Nodes), start, end, elapsed(t, now),
					sched.FormatTimeLimit(time.Duration(t.CpuTimeMs) * time.Millisecond), peakCell(t.MaxRssBytes)})
			}
			return p.table([]string{"ID", "NAME", "USER", "STATE", "EXIT", "NODES", "START", "END", "ELAPSED", "CPU", "MAXRSS"}, rows)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&user, "user", "u", "", "only this user's jobs (name or uid)")
	f.StringVar(&since, "since", "", "only jobs that ended after this: a duration back (24h, 7d) or a date (2026-03-01 or RFC 3339)")
	f.Uint32VarP(&limit, "limit", "n", 0, "at most this many tasks (default 1000)")
	outputFlag(cmd, &format)
	return cmd
}

// maxSinceDays bounds the day counts parseSince computes with: far more than the epoch is
// ago, far less than what overflows time.AddDate.
const maxSinceDays = 1_000_000

// parseSince reads "24h", "7d", "2026-03-01" or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			// AddDate overflows past about 2^63 days and lands ahead of now; a look back
			// past the epoch asks for all the history there is.
			if t := now.AddDate(0, 0, -n); n <= maxSinceDays && !t.Before(time.Unix(0, 0)) {
				return t, nil
			}
			return time.Unix(0, 0), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q is not a duration or a date: write it like 24h, 7d or 2026-03-01", s)
}

type queueJSON struct {
	Name           string   `json:"name"`
	Nodes          []string `json:"nodes"`
	MaxRunningJobs uint32   `json:"max_running_jobs"`
	MaxCPUsPerUser float64  `json:"max_cpus_per_user"`
	MaxTimeSecs    int64    `json:"max_time_seconds"`
	Oversubscribe  float64  `json:"oversubscribe"`
	Default        bool     `json:"default"`
}

func toQueueJSON(x *jobspb.QueueInfo) queueJSON {
	nodes := x.Nodes
	if nodes == nil {
		nodes = []string{}
	}
	return queueJSON{Name: x.Name, Nodes: nodes, MaxRunningJobs: x.MaxRunningJobs,
		MaxCPUsPerUser: float64(x.MaxCpusPerUserMilli) / 1000, MaxTimeSecs: x.MaxTimeSeconds,
		Oversubscribe: x.Oversubscribe, Default: x.Name == sched.DefaultQueueName}
}

func newQueueCommand(g *Globals) *cobra.Command {
	queue := &cobra.Command{
		Use:   "queue",
		Short: "Manage the named queues jobs are submitted to",
		Long: `Queues are partitions of the cluster with their own node sets and limits. Without any, every
job goes to the built-in queue "batch" over all nodes; it stays available unless configured.`,
		Example: `  ssi queue ls
  sudo ssi queue create debug --nodes n1,n2 --max-time 30 --max-running 4
  sudo ssi queue rm debug`,
	}
	var q struct {
		nodes            []string
		maxRunning       uint32
		maxCPUs, maxTime string
		oversubscribe    float64
		replace          bool
		format           string
	}
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create (or with --replace, change) a queue; root only",
		Example: `  sudo ssi queue create debug --nodes n1,n2 --max-time 30 --max-running 4
  sudo ssi queue create shared --max-cpus-per-user 16 --oversubscribe 2
  sudo ssi queue create debug --replace --max-time 1:00:00`,
		Args: NeedArgs(1, 1, "the queue's name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// An empty --nodes (an unset variable, usually) would mean every node.
			if cmd.Flags().Changed("nodes") && (len(q.nodes) == 0 || slices.Contains(q.nodes, "")) {
				return errors.New("--nodes has an empty node name: give names like n1,n2 (see ssi nodes), or leave --nodes out for every node")
			}
			info := &jobspb.QueueInfo{Name: args[0], Nodes: q.nodes, MaxRunningJobs: q.maxRunning, Oversubscribe: q.oversubscribe}
			if q.maxCPUs != "" {
				v, err := sched.ParseCPUs(q.maxCPUs)
				if err != nil {
					return err
				}
				info.MaxCpusPerUserMilli = v
			}
			if q.maxTime != "" {
				d, err := sched.ParseTimeLimit(q.maxTime)
				if err != nil {
					return err
				}
				info.MaxTimeSeconds = int64(d / time.Second)
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			created, err := client.CreateQueue(ctx, &jobspb.CreateQueueRequest{Queue: info, Replace: q.replace})
			if err != nil {
				return g.rpcError(err)
			}
			if q.format == formatJSON {
				return printer{w: cmd.OutOrStdout(), format: q.format}.json(toQueueJSON(created))
			}
			return nil
		},
	}
	outputFlag(create, &q.format)
	cf := create.Flags()
	cf.StringSliceVar(&q.nodes, "nodes", nil, "nodes of the queue (default: every node)")
	cf.Uint32Var(&q.maxRunning, "max-running", 0, "most jobs running at once (default: no limit)")
	cf.StringVar(&q.maxCPUs, "max-cpus-per-user", "", "most cpus one user may use at once (default: no limit)")
	cf.StringVar(&q.maxTime, "max-time", "", "longest time limit accepted, and the limit of jobs that set none")
	cf.Float64Var(&q.oversubscribe, "oversubscribe", 0, "count each node's cpus this many times over (1-64; memory never)")
	cf.BoolVar(&q.replace, "replace", false, "change the queue if it exists")

	ls := &cobra.Command{
		Use:     "ls",
		Short:   "List the queues and their limits",
		Example: "  ssi queue ls\n  ssi queue ls -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(q.format); err != nil {
				return err
			}
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := client.ListQueues(ctx, &jobspb.ListQueuesRequest{})
			if err != nil {
				return g.rpcError(err)
			}
			out := make([]queueJSON, 0, len(resp.Queues))
			rows := make([][]string, 0, len(resp.Queues))
			for _, x := range resp.Queues {
				out = append(out, toQueueJSON(x))
				limit := func(v int64, f func(int64) string) string {
					if v == 0 {
						return "-"
					}
					return f(v)
				}
				nodeCell := "all"
				if len(x.Nodes) > 0 {
					nodeCell = strings.Join(x.Nodes, ",")
				}
				rows = append(rows, []string{x.Name, nodeCell,
					limit(int64(x.MaxRunningJobs), func(v int64) string { return strconv.FormatInt(v, 10) }),
					limit(x.MaxCpusPerUserMilli, sched.FormatCPUs),
					limit(x.MaxTimeSeconds, func(v int64) string { return sched.FormatTimeLimit(time.Duration(v) * time.Second) }),
					limit(int64(x.Oversubscribe*1000), func(v int64) string { return strconv.FormatFloat(x.Oversubscribe, 'g', -1, 64) })})
			}
			p := printer{w: cmd.OutOrStdout(), format: q.format}
			if q.format == formatJSON {
				return p.json(out)
			}
			return p.table([]string{"QUEUE", "NODES", "MAX-RUNNING", "MAX-CPUS/USER", "MAX-TIME", "OVERSUBSCRIBE"}, rows)
		},
	}
	outputFlag(ls, &q.format)

	rm := &cobra.Command{
		Use:     "rm NAME",
		Short:   "Remove a queue no active job uses; root only",
		Example: "  sudo ssi queue rm debug",
		Args:    NeedArgs(1, 1, "the queue's name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client := g.jobs()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			if _, err := client.RemoveQueue(ctx, &jobspb.RemoveQueueRequest{Name: args[0]}); err != nil {
				return g.rpcError(err)
			}
			if q.format == formatJSON {
				return printer{w: cmd.OutOrStdout(), format: q.format}.json(map[string]any{"name": args[0], "removed": true})
			}
			return nil
		},
	}
	outputFlag(rm, &q.format)
	queue.AddCommand(create, ls, rm)
	return queue
}

func newNodeCommand(g *Globals) *cobra.Command {
	node := &cobra.Command{
		Use:   "node",
		Short: "Take nodes out of and back into the scheduler's service",
		Example: `  sudo ssi node drain n3 --reason "disk swap"
  sudo ssi node resume n3`,
	}
	var reason, format string
	drain := &cobra.Command{
		Use:   "drain NODE --reason R",
		Short: "Start no new jobs on a node; running ones finish (root only)",
		Example: `  sudo ssi node drain n3 --reason "disk swap"
  ssi jobs      # pending jobs that could use n3 say it is draining`,
		Args: NeedArgs(1, 1, "one node name (see ssi nodes)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return errors.New("give a reason with --reason, so users see why the node takes no work")
			}
			return drainCall(cmd, g, &jobspb.DrainRequest{Node: args[0], Reason: reason}, true, format)
		},
	}
	drain.Flags().StringVar(&reason, "reason", "", "why the node is drained (shown to users)")
	outputFlag(drain, &format)
	resume := &cobra.Command{
		Use:     "resume NODE",
		Short:   "Let a drained node take jobs again (root only)",
		Example: "  sudo ssi node resume n3",
		Args:    NeedArgs(1, 1, "one node name (see ssi nodes)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return drainCall(cmd, g, &jobspb.DrainRequest{Node: args[0]}, false, format)
		},
	}
	outputFlag(resume, &format)
	node.AddCommand(drain, resume)
	return node
}

func drainCall(cmd *cobra.Command, g *Globals, req *jobspb.DrainRequest, drain bool, format string) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	client := g.jobs()
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	call := client.Drain
	if !drain {
		call = client.Resume
	}
	resp, err := call(ctx, req)
	if err != nil {
		return g.rpcError(err)
	}
	if format == formatJSON {
		return printer{w: cmd.OutOrStdout(), format: format}.json(map[string]any{"node": resp.Node, "draining": resp.Draining})
	}
	return nil
}

// peakCell shows a task's peak memory; 0 means the node could not measure it (see
// docs/jobs.md, "Peak memory").
func peakCell(n uint64) string {
	if n == 0 {
		return "-"
	}
	return humanBytes(n)
}
