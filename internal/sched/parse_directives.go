package sched

import (
	"bytes"
	"fmt"
	"strings"
)

// DirectivePrefix starts an option line in a batch script, like #SBATCH for Slurm.
const DirectivePrefix = "#SSI"

// ParseScriptDirectives collects the options of the "#SSI ..." lines in a script's leading
// comment block, in order, split into words as a shell would ("#SSI --name 'my job'" gives
// "--name", "my job"), so the CLI can parse them with the same flags as its command line.
// The block starts after an optional "#!" line and ends at the first line that is neither blank
// nor a comment; later #SSI lines are ignored, as Slurm ignores late #SBATCH lines. A "#" that
// starts a word ends the line's options, so "#SSI --cpus 2  # two" is just "--cpus 2".
// "##SSI" or "# SSI" lines are ordinary comments: the usual way to switch one off.
func ParseScriptDirectives(script []byte) ([]string, error) {
	var args []string
	for lineNo, line := range bytes.Split(script, []byte("\n")) {
		text := strings.TrimRight(string(line), "\r")
		trimmed := strings.TrimSpace(text)
		if lineNo == 0 && strings.HasPrefix(text, "#!") {
			continue
		}
		if trimmed == "" {
			continue
		}
		if !strings.HasPrefix(trimmed, "#") {
			break
		}
		rest, ok := strings.CutPrefix(trimmed, DirectivePrefix)
		if !ok || rest != "" && rest[0] != ' ' && rest[0] != '\t' {
			continue
		}
		words, err := splitShellWords(rest)
		if err != nil {
			return nil, fmt.Errorf("script line %d: %w", lineNo+1, err)
		}
		args = append(args, words...)
	}
	return args, nil
}

// splitShellWords splits like a POSIX shell without expansions: single quotes keep everything,
// double quotes keep everything but backslash escapes of \ " $ `, and a backslash outside quotes
// keeps the next character.
func splitShellWords(text string) ([]string, error) {
	var words []string
	var word strings.Builder
	inWord := false
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '\\':
			if i+1 == len(text) {
				return nil, fmt.Errorf("%s line ends with a backslash: lines cannot be continued, put the rest on another %s line", DirectivePrefix, DirectivePrefix)
			}
			i++
			word.WriteByte(text[i])
			inWord = true
		case c == '\'':
			end := strings.IndexByte(text[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated ' quote in %s line: close the quote", DirectivePrefix)
			}
			word.WriteString(text[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			j := i + 1
			for ; j < len(text) && text[j] != '"'; j++ {
				if text[j] == '\\' && j+1 < len(text) && strings.IndexByte("\\\"$`", text[j+1]) >= 0 {
					j++
				}
				word.WriteByte(text[j])
			}
			if j == len(text) {
				return nil, fmt.Errorf("unterminated \" quote in %s line: close the quote", DirectivePrefix)
			}
			i = j
			inWord = true
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, word.String())
	}
	return words, nil
}

// CheckScript refuses a batch script that could not run as the user meant, as sbatch does:
// one with DOS line breaks ("#!/bin/sh\r" names no interpreter, and every command would end
// in \r), one that starts with a byte-order mark (hiding its "#!" line and its #SSI lines),
// and a program rather than a script (the job would feed it to /bin/sh). Each would fail
// only when it runs, with a message about something else.
func CheckScript(script []byte) error {
	switch {
	case bytes.HasPrefix(script, []byte("\xef\xbb\xbf")):
		return fmt.Errorf("starts with a byte-order mark, which hides its #! and %s lines: save it without one (as UTF-8 without BOM)", DirectivePrefix)
	case bytes.IndexByte(script, 0) >= 0:
		return fmt.Errorf("is a binary file, not a script: run a program as ssi submit [options] -- PROGRAM [ARGS...]")
	case bytes.Contains(script, []byte("\r\n")):
		return fmt.Errorf("has DOS line breaks (\\r\\n) instead of Unix ones (\\n): convert it, e.g. with dos2unix")
	}
	return nil
}
