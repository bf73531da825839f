package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
)

// Output formats.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// outputFlag adds -o/--output to a command.
func outputFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVarP(dst, "output", "o", formatTable, "output format: table or json")
}

func checkFormat(f string) error {
	if f != formatTable && f != formatJSON {
		return fmt.Errorf("unknown output format %q: use -o table or -o json", f)
	}
	return nil
}

// printer renders a result either as JSON (the value itself) or as a table.
type printer struct {
	w      io.Writer
	format string
}

func (p printer) json(v any) error {
	enc := json.NewEncoder(p.w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows under a header, aligned in columns. Cells show control characters and
// bytes that are not UTF-8 as '?', as ps does: cells carry text other users chose (job names,
// commands), and a newline or tab would break the table, an escape sequence drive the
// reader's terminal.
func (p printer) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	cells := make([]string, 0, len(header))
	for _, r := range rows {
		cells = cells[:0]
		for _, c := range r {
			cells = append(cells, tableCell(c))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// tableCell is s with every rune that does not show as itself replaced by '?'.
func tableCell(s string) string {
	if printable(s) {
		return s
	}
	return strings.Map(func(c rune) rune {
		if c == utf8.RuneError || !unicode.IsPrint(c) {
			return '?'
		}
		return c
	}, strings.ToValidUTF8(s, "?"))
}

// humanBytes renders a size in binary units, as ps and free do.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ci", float64(n)/float64(div), "KMGTPE"[exp])
}
