package sched

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// errSizeTooLarge marks a size that is well formed but does not fit in int64 bytes.
var errSizeTooLarge = errors.New("too large")

const sizeSyntax = `use bytes ("1048576") or a number with a binary unit K, M, G, T or P ("512M", "1.5G")`

var sizeUnits = []struct {
	suffix byte
	bytes  int64
}{
	{'P', 1 << 50},
	{'T', 1 << 40},
	{'G', 1 << 30},
	{'M', 1 << 20},
	{'K', 1 << 10},
}

// ParseSize parses a memory size: plain bytes, or a number (fractions allowed) with a binary
// unit K, M, G, T or P (powers of 1024), optionally spelled "KB" or "KiB"; case does not matter.
// A fraction of a byte is dropped. Sizes above math.MaxInt64 bytes are refused.
func ParseSize(s string) (int64, error) {
	text := strings.ToUpper(strings.TrimSpace(s))
	if text == "" {
		return 0, fmt.Errorf("empty size: %s", sizeSyntax)
	}
	number, unitRequired := text, false
	switch {
	case strings.HasSuffix(number, "IB"):
		number, unitRequired = number[:len(number)-2], true
	case strings.HasSuffix(number, "B"):
		number = number[:len(number)-1]
	}
	unit := int64(1)
	if n := len(number); n > 0 {
		for _, u := range sizeUnits {
			if number[n-1] == u.suffix {
				unit, number = u.bytes, number[:n-1]
				break
			}
		}
	}
	whole, frac, hasFrac := strings.Cut(number, ".")
	if unitRequired && unit == 1 || whole == "" && frac == "" || hasFrac && frac == "" ||
		!digitsOnly(whole) || !digitsOnly(frac) {
		return 0, fmt.Errorf("size %q is not valid: %s", s, sizeSyntax)
	}
	tooBig := fmt.Errorf("size %q is %w: the most is %d bytes", s, errSizeTooLarge, int64(math.MaxInt64))
	total := int64(0)
	if whole != "" {
		w, err := strconv.ParseInt(whole, 10, 64)
		if err != nil || w > math.MaxInt64/unit {
			return 0, tooBig
		}
		total = w * unit
	}
	if frac != "" && unit > 1 {
		// 18 digits resolve far below one byte of a petabyte, and keep the scale in uint64.
		frac = frac[:min(len(frac), 18)]
		f, _ := strconv.ParseUint(frac, 10, 64)
		scale := uint64(math.Pow10(len(frac)))
		// f < scale, so the 128-bit product divided by scale fits in 64 bits.
		hi, lo := bits.Mul64(f, uint64(unit))
		part, _ := bits.Div64(hi, lo, scale)
		if total > math.MaxInt64-int64(part) {
			return 0, tooBig
		}
		total += int64(part)
	}
	return total, nil
}

func digitsOnly(s string) bool { return strings.TrimLeft(s, "0123456789") == "" }

// FormatSize prints bytes with the largest binary unit that leaves a whole number or one
// decimal ("512M", "1.5G", "4096"); ParseSize reads whole-unit results back exactly.
func FormatSize(b int64) string {
	for _, u := range sizeUnits {
		if b >= u.bytes {
			if b%u.bytes == 0 {
				return strconv.FormatInt(b/u.bytes, 10) + string(u.suffix)
			}
			tenths := b/u.bytes*10 + b%u.bytes*10/u.bytes
			return strconv.FormatInt(tenths/10, 10) + "." + strconv.FormatInt(tenths%10, 10) + string(u.suffix)
		}
	}
	return strconv.FormatInt(b, 10)
}

// ParseMem parses a --mem value. As Slurm's --mem, a number without a unit is megabytes
// (MiB): a Slurm user's "--mem 4000" asks for 4000M, and taking it as 4000 bytes would reserve
// nothing while the job needs gigabytes. Bytes take the unit B ("4096B"); everything else is
// as ParseSize.
func ParseMem(s string) (int64, error) {
	text := strings.TrimSpace(s)
	whole, frac, _ := strings.Cut(text, ".")
	if text != "" && (whole != "" || frac != "") && digitsOnly(whole) && digitsOnly(frac) {
		text += "M"
	}
	n, err := ParseSize(text)
	if errors.Is(err, errSizeTooLarge) {
		return 0, err
	}
	if err != nil {
		return 0, fmt.Errorf("memory size %q is not valid: use a number with a unit K, M, G or T (\"512M\", \"1.5G\"); a number alone is megabytes, as with Slurm", s)
	}
	return n, nil
}
