package sched

import (
	"fmt"
	"strconv"
	"strings"
)

const cpusSyntax = `use whole or decimal cpus ("2", "0.5") or millicores ("500m")`

// ParseCPUs parses a cpu count into millicores: "2" is 2000, "0.25" is 250, "500m" is 500.
// More than three decimals, zero and counts above MaxCPUsPerTask are refused.
func ParseCPUs(s string) (int64, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return 0, fmt.Errorf("empty cpu count: %s", cpusSyntax)
	}
	var milli int64
	if number, ok := strings.CutSuffix(text, "m"); ok {
		if number == "" || len(number) > 10 || !digitsOnly(number) {
			return 0, fmt.Errorf("cpu count %q is not valid: %s", s, cpusSyntax)
		}
		milli, _ = strconv.ParseInt(number, 10, 64)
	} else {
		whole, frac, hasFrac := strings.Cut(text, ".")
		if whole == "" && frac == "" || hasFrac && frac == "" || len(whole) > 7 ||
			!digitsOnly(whole) || !digitsOnly(frac) {
			return 0, fmt.Errorf("cpu count %q is not valid: %s", s, cpusSyntax)
		}
		if len(frac) > 3 {
			return 0, fmt.Errorf("cpu count %q is finer than a millicore: use at most three decimals", s)
		}
		w, _ := strconv.ParseInt("0"+whole, 10, 64)
		f, _ := strconv.ParseInt((frac + "000")[:3], 10, 64)
		milli = w*millicoresPerCPU + f
	}
	switch {
	case milli <= 0:
		return 0, fmt.Errorf("cpu count %q is zero: ask for more than zero", s)
	case milli > MaxCPUsPerTask:
		return 0, fmt.Errorf("cpu count %q is more than %s cpus: ask for fewer", s, FormatCPUs(MaxCPUsPerTask))
	}
	return milli, nil
}

// FormatCPUs prints millicores as cpus: 2000 is "2", 500 is "0.5", 1250 is "1.25".
func FormatCPUs(milli int64) string {
	sign := ""
	if milli < 0 {
		sign, milli = "-", -milli
	}
	whole, frac := milli/millicoresPerCPU, milli%millicoresPerCPU
	if frac == 0 {
		return sign + strconv.FormatInt(whole, 10)
	}
	return sign + strings.TrimRight(fmt.Sprintf("%d.%03d", whole, frac), "0")
}
