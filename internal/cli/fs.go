package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

// fsNodeJSON is the stable JSON shape of one node's side of the cluster file tree.
type fsNodeJSON struct {
	Node   string        `json:"node"`
	Error  string        `json:"error,omitempty"`
	Export *fsExportJSON `json:"export,omitempty"`
	Mount  *fsMountJSON  `json:"mount,omitempty"`
}

type fsExportJSON struct {
	Root              string   `json:"root"`
	Exports           []string `json:"exports"`
	ReadOnly          bool     `json:"read_only"`
	RootSquash        bool     `json:"root_squash"`
	Sessions          uint64   `json:"sessions"`
	OpenFiles         uint64   `json:"open_files"`
	WatchedDirs       uint64   `json:"watched_dirs"`
	Ops               uint64   `json:"ops"`
	BytesRead         uint64   `json:"bytes_read"`
	BytesWritten      uint64   `json:"bytes_written"`
	InvalidationsSent uint64   `json:"invalidations_sent"`
	DiskEvents        uint64   `json:"disk_events"`
	CacheEntries      uint64   `json:"cache_entries"`
}

type fsMountJSON struct {
	Path          string   `json:"path"`
	Mounted       bool     `json:"mounted"`
	Error         string   `json:"error,omitempty"`
	Ops           uint64   `json:"ops"`
	BytesRead     uint64   `json:"bytes_read"`
	BytesWritten  uint64   `json:"bytes_written"`
	Invalidations uint64   `json:"invalidations"`
	Flushes       uint64   `json:"flushes"`
	Failures      uint64   `json:"failures"`
	CachedInodes  uint64   `json:"cached_inodes"`
	Connected     []string `json:"connected"`
}

func toFSNodeJSON(n *ssipb.NodeFiles) fsNodeJSON {
	out := fsNodeJSON{Node: n.Node, Error: n.Error}
	if e := n.Export; e != nil {
		out.Export = &fsExportJSON{
			Root: e.Root, Exports: nonNil(e.Exports), ReadOnly: e.ReadOnly, RootSquash: e.RootSquash,
			Sessions: e.Sessions, OpenFiles: e.OpenFiles, WatchedDirs: e.WatchedDirs, Ops: e.Ops,
			BytesRead: e.BytesRead, BytesWritten: e.BytesWritten,
			InvalidationsSent: e.InvalidationsSent, DiskEvents: e.DiskEvents, CacheEntries: e.CacheEntries,
		}
	}
	if m := n.Mount; m != nil {
		out.Mount = &fsMountJSON{
			Path: m.Path, Mounted: m.Mounted, Error: m.Error, Ops: m.Ops, BytesRead: m.BytesRead,
			BytesWritten: m.BytesWritten, Invalidations: m.Invalidations, Flushes: m.Flushes,
			Failures: m.Failures, CachedInodes: m.CachedInodes, Connected: nonNil(m.Connected),
		}
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func newFSCommand(g *Globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "fs",
		Short: "Show the cluster file tree: what each node exports, its mount, cache and traffic",
		Long: `Show, for every node, its side of the cluster file tree (/ssi/<node>/<path>):

  EXPORTS   what the node serves to the others ("/" is everything, under Unix permissions),
            with "ro" when read-only and "squash" when root acts as nobody there
  SERVED    requests it served, bytes read from and written to its disks for other nodes,
            cache invalidations it pushed to them, and the cached copies it tracks (one per
            object and client; bounded, the client caching most drops its cache past the limit)
  MOUNT     where it mounts the tree, or why it does not
  CLIENT    requests its mount made, bytes it read and wrote, invalidations it applied,
            failed calls (an owner down) and cached inodes
  OWNERS    the owners whose invalidation stream is up (their files are cached)

Change what a node exports with the agent's --export, --export-read-only and --root-squash.`,
		Example: `  ssi fs
  ssi fs -o json | jq '.[] | {node, mounted: .mount.mounted}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callControl(g, cmd, format, func(ctx context.Context, ctl control) (*ssipb.FilesResponse, error) {
				return ctl.Files(ctx, &ssipb.FilesRequest{})
			})
			if err != nil {
				return err
			}
			p := printer{w: cmd.OutOrStdout(), format: format}
			if format == formatJSON {
				out := make([]fsNodeJSON, 0, len(resp.Nodes))
				for _, n := range resp.Nodes {
					out = append(out, toFSNodeJSON(n))
				}
				return p.json(out)
			}
			rows := make([][]string, 0, len(resp.Nodes))
			for _, n := range resp.Nodes {
				rows = append(rows, fsRow(n))
			}
			return p.table([]string{"NODE", "EXPORTS", "SERVED (OPS READ/WRITTEN INVAL TRACKED)", "MOUNT", "CLIENT (OPS READ/WRITTEN INVAL FAIL INODES)", "OWNERS"}, rows)
		},
	}
	outputFlag(cmd, &format)
	return cmd
}

func fsRow(n *ssipb.NodeFiles) []string {
	if n.Error != "" {
		return []string{n.Node, "-", "-", n.Error, "-", "-"}
	}
	exports, served := "-", "-"
	if e := n.Export; e != nil {
		exports = strings.Join(e.Exports, ",")
		if exports == "" {
			exports = e.Root
		}
		if e.ReadOnly {
			exports += " ro"
		}
		if e.RootSquash {
			exports += " squash"
		}
		served = fmt.Sprintf("%d %s/%s %d %d", e.Ops, humanBytes(e.BytesRead), humanBytes(e.BytesWritten), e.InvalidationsSent, e.CacheEntries)
	}
	mount, client, owners := "-", "-", "-"
	if m := n.Mount; m != nil {
		switch {
		case m.Mounted:
			mount = m.Path
			client = fmt.Sprintf("%d %s/%s %d %d %s", m.Ops, humanBytes(m.BytesRead), humanBytes(m.BytesWritten),
				m.Invalidations, m.Failures, strconv.FormatUint(m.CachedInodes, 10))
			owners = strings.Join(m.Connected, ",")
			if owners == "" {
				owners = "none yet"
			}
		case m.Error != "":
			mount = "not mounted: " + m.Error
		default:
			mount = "off (--no-mount)"
		}
	}
	return []string{n.Node, exports, served, mount, client, owners}
}
