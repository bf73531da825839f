package sched

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Bounds on array specs: indices from 0 to MaxArrayIndex, at most MaxArrayTasks elements.
const (
	MaxArrayIndex = 1_000_000
	MaxArrayTasks = 100_000
)

const arraySyntax = `use "1-100", "1-100:2", "1,5,7-9" with an optional "%5" running limit`

// ArrayRange is First..Last (inclusive) every Step.
type ArrayRange struct {
	First, Last, Step int
}

// ArraySpec is a parsed --array value.
type ArraySpec struct {
	Ranges     []ArrayRange
	MaxRunning int // 0 means no limit
}

// ParseArray parses an array spec: a comma list of "N", "N-M" or "N-M:S" items, optionally
// followed by "%K", the most elements that may run at once. Examples: "1-100", "0-98:2%5",
// "1,3,10-12". Overlapping items are merged.
func ParseArray(s string) (ArraySpec, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return ArraySpec{}, fmt.Errorf("empty array spec: %s", arraySyntax)
	}
	var spec ArraySpec
	list, limit, hasLimit := strings.Cut(text, "%")
	if hasLimit {
		n, err := parseArrayNumber(limit)
		if err != nil {
			return ArraySpec{}, fmt.Errorf("array spec %q: running limit %q is not a whole number: %s", s, limit, arraySyntax)
		}
		if n < 1 {
			return ArraySpec{}, fmt.Errorf("array spec %q: %%0 would never run an element: use %%1 or more", s)
		}
		spec.MaxRunning = n
	}
	if list == "" {
		return ArraySpec{}, fmt.Errorf("array spec %q has no indices before the %%: %s", s, arraySyntax)
	}
	total := 0
	for item := range strings.SplitSeq(list, ",") {
		r, err := parseArrayItem(item)
		if err != nil {
			return ArraySpec{}, fmt.Errorf("array spec %q: %w", s, err)
		}
		total += (r.Last-r.First)/r.Step + 1
		if total > MaxArrayTasks {
			return ArraySpec{}, fmt.Errorf("array spec %q has more than %d elements: split it into several arrays", s, MaxArrayTasks)
		}
		spec.Ranges = append(spec.Ranges, r)
	}
	return spec, nil
}

func parseArrayItem(item string) (ArrayRange, error) {
	if item == "" {
		return ArrayRange{}, fmt.Errorf("empty item between commas: %s", arraySyntax)
	}
	bounds, stepText, hasStep := strings.Cut(item, ":")
	firstText, lastText, isRange := strings.Cut(bounds, "-")
	if hasStep && !isRange {
		return ArrayRange{}, fmt.Errorf("item %q has a step but no range: write N-M:S", item)
	}
	first, err := parseArrayNumber(firstText)
	if err != nil {
		return ArrayRange{}, fmt.Errorf("item %q: %w", item, err)
	}
	r := ArrayRange{First: first, Last: first, Step: 1}
	if isRange {
		if r.Last, err = parseArrayNumber(lastText); err != nil {
			return ArrayRange{}, fmt.Errorf("item %q: %w", item, err)
		}
		if r.Last < r.First {
			return ArrayRange{}, fmt.Errorf("item %q runs backwards: write the smaller index first", item)
		}
	}
	if hasStep {
		if r.Step, err = parseArrayNumber(stepText); err != nil {
			return ArrayRange{}, fmt.Errorf("item %q: step %w", item, err)
		}
		if r.Step < 1 {
			return ArrayRange{}, fmt.Errorf("item %q has step 0: use a step of 1 or more", item)
		}
	}
	return r, nil
}

func parseArrayNumber(text string) (int, error) {
	if text == "" || len(text) > 7 || strings.TrimLeft(text, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not an index from 0 to %d: %s", text, MaxArrayIndex, arraySyntax)
	}
	n, _ := strconv.Atoi(text) // at most 7 digits, so it cannot fail
	if n > MaxArrayIndex {
		return 0, fmt.Errorf("%q is not an index from 0 to %d: %s", text, MaxArrayIndex, arraySyntax)
	}
	return n, nil
}

// Indices lists every element index once, in increasing order.
func (a ArraySpec) Indices() []int {
	var out []int
	for _, r := range a.Ranges {
		if r.Step < 1 || r.Last < r.First {
			continue
		}
		for i := r.First; i <= r.Last; i += r.Step {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Len is the number of distinct elements.
func (a ArraySpec) Len() int { return len(a.Indices()) }

// String formats the spec so that ParseArray reads it back unchanged.
func (a ArraySpec) String() string {
	var b strings.Builder
	for i, r := range a.Ranges {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(r.First))
		if r.Last != r.First || r.Step != 1 {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(r.Last))
		}
		if r.Step != 1 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(r.Step))
		}
	}
	if a.MaxRunning > 0 {
		b.WriteByte('%')
		b.WriteString(strconv.Itoa(a.MaxRunning))
	}
	return b.String()
}
