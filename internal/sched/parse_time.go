package sched

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxTimeLimit is the longest time limit ParseTimeLimit accepts.
const MaxTimeLimit = 365 * 24 * time.Hour

const timeLimitSyntax = `use minutes ("30"), "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS" or a Go duration ("90s", "2h")`

// ParseTimeLimit parses a --time value in Slurm's forms: "30" (minutes), "MM:SS", "HH:MM:SS",
// "D-HH", "D-HH:MM", "D-HH:MM:SS", or a Go duration such as "90s" or "1h30m". The first field
// may be any size ("90:00" is 90 minutes); later fields must be below 60, and hours after a day
// count below 24. The result is rounded up to whole seconds and lies in (0, MaxTimeLimit].
// Unlike Slurm, "0" and "unlimited" are refused: a job without a limit simply omits --time.
func ParseTimeLimit(s string) (time.Duration, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return 0, fmt.Errorf("empty time limit: %s", timeLimitSyntax)
	}
	var d time.Duration
	if strings.ContainsAny(text, "hmsuµn") {
		var err error
		if d, err = time.ParseDuration(text); err != nil {
			return 0, fmt.Errorf("time limit %q is not valid: %s", s, timeLimitSyntax)
		}
		if d > MaxTimeLimit {
			return 0, fmt.Errorf("time limit %q is longer than %s: ask for less", s, FormatTimeLimit(MaxTimeLimit))
		}
		if rem := d % time.Second; rem > 0 {
			d += time.Second - rem
		}
	} else {
		seconds, err := parseSlurmTime(text)
		if err != nil {
			return 0, fmt.Errorf("time limit %q is not valid: %w", s, err)
		}
		if seconds > int64(MaxTimeLimit/time.Second) {
			return 0, fmt.Errorf("time limit %q is longer than %s: ask for less", s, FormatTimeLimit(MaxTimeLimit))
		}
		d = time.Duration(seconds) * time.Second
	}
	if d <= 0 {
		return 0, fmt.Errorf("time limit %q is not more than zero: give a positive limit or omit --time", s)
	}
	return d, nil
}

// parseSlurmTime returns seconds. Every field has at most 9 digits, so no sum overflows.
func parseSlurmTime(text string) (int64, error) {
	days := int64(-1)
	rest := text
	if dayText, after, ok := strings.Cut(text, "-"); ok {
		n, err := timeField(dayText, "days", -1)
		if err != nil {
			return 0, err
		}
		days, rest = n, after
	}
	fields := strings.Split(rest, ":")
	if len(fields) > 3 {
		return 0, fmt.Errorf("too many fields: %s", timeLimitSyntax)
	}
	// units[i] is the unit of fields[i]; the first field's unit depends on the form.
	var units []int64
	var names []string
	switch {
	case days >= 0:
		units, names = []int64{3600, 60, 1}, []string{"hours", "minutes", "seconds"}
	case len(fields) == 1:
		units, names = []int64{60}, []string{"minutes"}
	case len(fields) == 2:
		units, names = []int64{60, 1}, []string{"minutes", "seconds"}
	default:
		units, names = []int64{3600, 60, 1}, []string{"hours", "minutes", "seconds"}
	}
	total := max(days, 0) * 86400
	for i, f := range fields {
		bound := int64(60)
		switch {
		case i == 0 && days >= 0:
			bound = 24
		case i == 0:
			bound = -1 // the leading field may exceed its usual range
		}
		n, err := timeField(f, names[i], bound)
		if err != nil {
			return 0, err
		}
		total += n * units[i]
	}
	return total, nil
}

func timeField(text, name string, bound int64) (int64, error) {
	if text == "" || len(text) > 9 || strings.TrimLeft(text, "0123456789") != "" {
		return 0, fmt.Errorf("%s field %q is not a whole number: %s", name, text, timeLimitSyntax)
	}
	n, _ := strconv.ParseInt(text, 10, 64) // at most 9 digits, so it cannot fail
	if bound > 0 && n >= bound {
		return 0, fmt.Errorf("%s field %q must be below %d: %s", name, text, bound, timeLimitSyntax)
	}
	return n, nil
}

// FormatTimeLimit prints d as Slurm does, "HH:MM:SS" or "D-HH:MM:SS", truncated to whole
// seconds; ParseTimeLimit reads it back.
func FormatTimeLimit(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	days, s := s/86400, s%86400
	if days > 0 {
		return fmt.Sprintf("%d-%02d:%02d:%02d", days, s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d:%02d", s/3600, s/60%60, s%60)
}
